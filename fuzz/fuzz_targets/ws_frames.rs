//! What a WebSocket client sends before and after the upgrade: the HTTP upgrade request
//! (`frame::parse_upgrade`) and client frames (`frame::read_frame`, unmasking in place), read the
//! way the connection reads them: one after another from a buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::ws::frame::{parse_upgrade, read_frame, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = parse_upgrade(data) {
        assert!(used <= data.len() && used <= MAX_REQUEST);
    }
    let mut buf = data.to_vec();
    let mut off = 0;
    while off < buf.len() {
        match read_frame(&mut buf[off..], 64 * 1024) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && frame.payload.len() < used);
                off += used;
            }
            Ok(None) => break,
            Err(bad) => {
                assert!(bad.0 == 1002 || bad.0 == 1009, "{bad:?}");
                break;
            }
        }
    }
});
