//! The journal's bytes as they come back from a disk that may be damaged: a segment's header and
//! records of either format version (`format::read_header`, `read_at`, `decode`, checksums and
//! lengths first), and a snapshot (`snapshot::decode`). Damage is reported, never a panic or an allocation the bytes
//! ask for without proof.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::journal::format::{self, Version};
use signalgate::journal::snapshot;

fuzz_target!(|data: &[u8]| {
    let version = format::read_header(data).map_or(Version::V2, |(_, v)| v);
    let mut off = if data.len() >= format::SEGMENT_HEADER { format::SEGMENT_HEADER } else { 0 };
    while let Ok(rec) = format::read_at(data, off, version) {
        // The record lies within the bytes; only a version 2 record's padding may run past their end.
        let end = off + format::RECORD_HEADER + rec.payload.len();
        assert!(end <= data.len());
        match version {
            Version::V1 => assert_eq!(rec.next, end),
            Version::V2 => assert_eq!(rec.next, off + format::record_len(rec.payload.len())),
        }
        if let Ok(event) = format::decode(rec.payload, version) {
            // An event that decodes encodes back to a record that reads as the same event.
            let mut again = Vec::new();
            format::encode(&mut again, &event);
            let found = format::read_at(&again, 0, Version::V2).expect("an encoded record reads back");
            assert_eq!(format::decode(found.payload, Version::V2).ok(), Some(event));
        }
        off = rec.next;
    }
    let _ = snapshot::decode(data);
});
