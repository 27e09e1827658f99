//! The journal's on-disk format.
//!
//! A journal is a directory of segment files named after the sequence number of their first
//! record (`00000000000000000001.seg`). A segment starts with a 16-byte header (magic, then the
//! first sequence number, little-endian) followed by records:
//!
//! ```text
//! u32 payload length | u32 CRC32C of (seq ‖ payload) | u64 seq | payload (rkyv-encoded Event)
//! ```
//!
//! All integers are little-endian, and the rkyv payload is built with rkyv's `little_endian`,
//! `unaligned` and `pointer_width_32` features so that it can be read in place on any host.
//!
//! Two versions, told apart by the magic:
//! - **2** (`SGJRNL02`, what the node writes): segments are preallocated and written through a
//!   memory mapping, so their unused end is zeros. Each record starts at a multiple of 8 (zero
//!   padding after the payload), and its length is written last, with a release store, after the
//!   rest of it: a record whose length is still zero is not there yet, and a length of zero at a
//!   record boundary is the end of the segment's records.
//! - **1** (`SGJRNL01`, written by earlier versions with `write(2)`): records follow each other
//!   without padding and the file ends after the last one. Read, never written.

use crate::engine::event::Event;

/// First bytes of a segment the node writes (version 2).
pub const MAGIC: &[u8; 8] = b"SGJRNL02";
/// First bytes of a version 1 segment.
pub const MAGIC_V1: &[u8; 8] = b"SGJRNL01";
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER: usize = 16;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 16;
/// Where version 2 records start: multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// Largest payload a record may have; anything longer is damage.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// A segment's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Written with `write(2)`, records back to back.
    V1,
    /// Preallocated and mapped, records aligned, length written last.
    V2,
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number named by a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_numbered(name, "", SEGMENT_SUFFIX)
}

/// The sequence number in a file name `<prefix><20 digits><suffix>`.
pub fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The files of `dir` named `<prefix><20 digits><suffix>`, with their numbers, in order. A
/// missing directory has none.
pub fn list_numbered(
    dir: &std::path::Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<Vec<(u64, std::path::PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(|name| parse_numbered(name, prefix, suffix)) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A (version 2) segment header for `first_seq`.
pub fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// The first sequence number and the version in a segment header, if the header is whole and
/// valid.
pub fn read_header(buf: &[u8]) -> Option<(u64, Version)> {
    let h = buf.get(..SEGMENT_HEADER)?;
    let version = match &h[..8] {
        m if m == MAGIC => Version::V2,
        m if m == MAGIC_V1 => Version::V1,
        _ => return None,
    };
    Some((u64::from_le_bytes(h[8..].try_into().unwrap_or_default()), version))
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// Bytes a version 2 record with `payload_len` bytes of payload takes, padding included.
pub fn record_len(payload_len: usize) -> usize {
    (RECORD_HEADER + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// Encodes `event` into `out` as a whole version 2 record (header, payload, padding), appended.
/// Allocates nothing once `out` has room.
pub fn encode(out: &mut Vec<u8>, event: &Event) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    // Serializing into a `Vec` cannot fail: the event holds no pointers and the Vec grows.
    let mut buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Panic>(event, std::mem::take(out))
        .unwrap_or_else(|never| match never {});
    let payload_len = buf.len() - start - RECORD_HEADER;
    let crc = checksum(event.seq, &buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&event.seq.to_le_bytes());
    buf.resize(start + record_len(payload_len), 0);
    *out = buf;
}

/// One record found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: &'a [u8],
    /// Offset just past it and, in version 2, its padding: where the next record starts. The
    /// buffer may end before that when it ends inside the padding (a follower reads up to the
    /// payload's end only), so `next` can lie past the buffer's end.
    pub next: usize,
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// A version 2 length of zero: no record here (yet); the segment's records end before it.
    End,
    /// Fewer bytes than a record header, or than the length says.
    Short,
    /// The length is larger than any record.
    Length(u32),
    /// The checksum does not match.
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::End => f.write_str("no record"),
            Bad::Short => f.write_str("record cut short"),
            Bad::Length(n) => write!(f, "record length {n} exceeds the maximum of {MAX_PAYLOAD}"),
            Bad::Checksum => f.write_str("checksum mismatch"),
        }
    }
}

/// Reads the record at `off` of `buf`, a segment (or a part of one starting at a record) of
/// version `v`.
pub fn read_at(buf: &[u8], off: usize, v: Version) -> Result<Found<'_>, Bad> {
    let header = buf.get(off..off + RECORD_HEADER).ok_or(Bad::Short)?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    if len == 0 && v == Version::V2 {
        return Err(Bad::End);
    }
    if len as usize > MAX_PAYLOAD {
        return Err(Bad::Length(len));
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let end = off + RECORD_HEADER + len as usize;
    let payload = buf.get(off + RECORD_HEADER..end).ok_or(Bad::Short)?;
    if checksum(seq, payload) != crc {
        return Err(Bad::Checksum);
    }
    let next = match v {
        Version::V1 => end,
        Version::V2 => off + record_len(len as usize),
    };
    Ok(Found { seq, payload, next })
}

/// Decodes a payload of a segment of version `v`, validating it first. An event of version 1 has
/// zeros where it lacks today's fields (see `journal::v1`).
pub fn decode(payload: &[u8], v: Version) -> Result<Event, String> {
    match v {
        Version::V2 => {
            rkyv::from_bytes::<Event, rkyv::rancor::Error>(payload).map_err(|e| format!("undecodable event: {e}"))
        }
        Version::V1 => super::v1::decode(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::EventKind;
    use crate::engine::market::Quote;
    use crate::engine::types::SymbolId;

    fn quote(seq: u64) -> Event {
        Event {
            seq,
            ts: 1_700_000_000_000_000_000 + seq,
            kind: EventKind::Quote(Quote { symbol: SymbolId(1), bid: 100, ask: 101, bid_size: 3, ask_size: 4, ts: 5 }),
        }
    }

    /// The payload length of the record at the start of `buf`.
    fn payload_len(buf: &[u8]) -> usize {
        u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize
    }

    #[test]
    fn records_round_trip_aligned_with_a_zero_length_as_the_end() {
        let mut buf = Vec::new();
        for seq in 1..=3 {
            encode(&mut buf, &quote(seq));
            assert_eq!(buf.len() % RECORD_ALIGN, 0);
        }
        buf.extend_from_slice(&[0; 64]);
        let mut off = 0;
        for seq in 1..=3 {
            let f = read_at(&buf, off, Version::V2).expect("record");
            assert_eq!(f.seq, seq);
            assert_eq!(decode(f.payload, Version::V2).expect("decodes"), quote(seq));
            off = f.next;
        }
        assert_eq!(read_at(&buf, off, Version::V2), Err(Bad::End));
        assert_eq!(read_at(&buf[..off], off, Version::V2), Err(Bad::Short));
    }

    #[test]
    fn version_1_records_still_read() {
        let mut v1 = Vec::new();
        for seq in 1..=2 {
            let mut rec = Vec::new();
            encode(&mut rec, &quote(seq));
            v1.extend_from_slice(&rec[..RECORD_HEADER + payload_len(&rec)]);
        }
        let first = read_at(&v1, 0, Version::V1).expect("record");
        let second = read_at(&v1, first.next, Version::V1).expect("record");
        assert_eq!((first.seq, second.seq, second.next), (1, 2, v1.len()));
        assert_eq!(read_at(&v1, v1.len(), Version::V1), Err(Bad::Short));
        let mut h = segment_header(5);
        h[..8].copy_from_slice(MAGIC_V1);
        assert_eq!(read_header(&h), Some((5, Version::V1)));
    }

    #[test]
    fn damage_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, &quote(7));
        let end = RECORD_HEADER + payload_len(&buf);
        assert_eq!(read_at(&buf[..end - 1], 0, Version::V2), Err(Bad::Short));
        let mut flipped = buf.clone();
        flipped[end - 1] ^= 1;
        assert_eq!(read_at(&flipped, 0, Version::V2), Err(Bad::Checksum));
        let mut seq_changed = buf.clone();
        seq_changed[8] ^= 1;
        assert_eq!(read_at(&seq_changed, 0, Version::V2), Err(Bad::Checksum));
        let mut long = buf;
        long[..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(read_at(&long, 0, Version::V2), Err(Bad::Length(MAX_PAYLOAD as u32 + 1)));
    }

    #[test]
    fn segment_names_sort_by_sequence() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.damaged"), None);
        assert_eq!(read_header(&segment_header(9)), Some((9, Version::V2)));
        assert_eq!(read_header(&segment_header(9)[..15]), None);
    }
}
