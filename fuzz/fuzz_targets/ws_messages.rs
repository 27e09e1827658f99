//! WebSocket client messages in both modes: binary (`u16 version ‖ rkyv`, validated before use)
//! and JSON. Whatever decodes encodes back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::ws::protocol::{decode_client, decode_client_json, encode_client};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_client(data) {
        assert_eq!(decode_client(&encode_client(&msg)).ok(), Some(msg));
    }
    if let Ok(msg) = decode_client_json(data) {
        let text = serde_json::to_vec(&msg).unwrap();
        assert_eq!(decode_client_json(&text).ok(), Some(msg));
    }
});
