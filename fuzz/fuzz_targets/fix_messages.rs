//! What a FIX counterparty sends: a stream of FIX 4.4 messages, framed one after another
//! (`codec::frame`) and indexed (`Message::parse`), every typed read tried on every field; a
//! message read whole is written again from its fields and must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::venue::fix::codec::{frame, Encoder, Message, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(n)) = frame(rest) {
        assert!(n <= rest.len() && n <= MAX_BODY + 32);
        if let Ok(m) = Message::parse(&rest[..n]) {
            for (tag, _) in m.fields() {
                let _ = (m.uint(tag), m.char(tag), m.flag(tag), m.decimal(tag, 8), m.timestamp(tag), m.str(tag));
            }
            // Data fields may hold SOH: those messages are not written again.
            if m.fields().skip(1).all(|(_, v)| !v.contains(&0x01)) {
                let mut out = Vec::new();
                let mut e = Encoder::new(&mut out, m.msg_type());
                for (tag, value) in m.fields().skip(1) {
                    e.bytes(tag, value);
                }
                e.finish();
                let again = Message::parse(&out).expect("a message written from read fields reads back");
                assert!(again.fields().eq(m.fields()));
            }
        }
        rest = &rest[n..];
    }
});
