//! Reading the journal while the writer appends to it: the snapshot follower and the PostgreSQL
//! offloader each keep a [`Tail`] and ask it for the records written since their last call.
//!
//! A record the writer has not finished yet is simply not there: it is read on a later call.
//! Records must follow each other without gaps; a gap, or a record from before the position asked
//! for, means the journal changed under the reader, and is an error.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, SEGMENT_HEADER};
use super::scan::{list_segments, Segment};
use crate::engine::event::Event;

/// Bytes read from a segment at a time.
const CHUNK: usize = 1 << 20;

/// A reading position in the journal of one directory.
pub struct Tail {
    dir: PathBuf,
    /// The segment being read and its file, once one holds `next_seq`.
    open: Option<(Segment, File)>,
    /// File offset of `buf[0]`.
    base: u64,
    /// Bytes read from the file and not yet consumed (starting at a record boundary).
    buf: Vec<u8>,
    /// The sequence number of the next record to hand out.
    next_seq: u64,
}

impl Tail {
    /// A reader whose first record will be `next_seq`.
    pub fn new(dir: &Path, next_seq: u64) -> Tail {
        Tail { dir: dir.to_path_buf(), open: None, base: 0, buf: Vec::new(), next_seq }
    }

    /// The sequence number of the next record.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Hands the complete records from `next_seq` up to `upto` (at most `max` of them) to `f`, in
    /// order. Returns how many it handed out; fewer than asked when the writer has not written
    /// more yet.
    pub fn read(
        &mut self,
        upto: u64,
        max: usize,
        mut f: impl FnMut(Event) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut n = 0;
        while n < max && self.next_seq <= upto {
            if self.open.is_none() && !self.find_segment()? {
                break;
            }
            let mut off = 0;
            while n < max && self.next_seq <= upto {
                let Ok(rec) = format::read_at(&self.buf, off) else { break };
                if rec.seq < self.next_seq {
                    // Only when starting inside a segment: skip to the position asked for.
                    off = rec.next;
                    continue;
                }
                if rec.seq != self.next_seq {
                    return Err(format!(
                        "{} at offset {}: seq {} where {} was expected",
                        self.path().display(),
                        self.base + off as u64,
                        rec.seq,
                        self.next_seq
                    ));
                }
                f(format::decode(rec.payload)?)?;
                self.next_seq += 1;
                n += 1;
                off = rec.next;
            }
            self.consume(off);
            if n == max || self.next_seq > upto {
                break;
            }
            if !self.fill()? && !self.next_segment()? {
                break;
            }
        }
        Ok(n)
    }

    fn path(&self) -> &Path {
        self.open.as_ref().map_or(&self.dir, |(s, _)| &s.path)
    }

    /// Opens the segment holding `next_seq`; `false` when there is none yet.
    fn find_segment(&mut self) -> Result<bool, String> {
        let segments = list_segments(&self.dir).map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        let Some(seg) = segments.iter().rev().find(|s| s.first_seq <= self.next_seq) else {
            if let Some(first) = segments.first() {
                return Err(format!(
                    "events {}..{} are no longer in the journal in {} (pruned)",
                    self.next_seq,
                    first.first_seq - 1,
                    self.dir.display()
                ));
            }
            return Ok(false);
        };
        self.open_segment(seg.clone())?;
        Ok(true)
    }

    fn open_segment(&mut self, seg: Segment) -> Result<(), String> {
        let file = File::open(&seg.path).map_err(|e| format!("cannot open {}: {e}", seg.path.display()))?;
        self.open = Some((seg, file));
        self.base = SEGMENT_HEADER as u64;
        self.buf.clear();
        Ok(())
    }

    /// Drops the first `n` bytes of the buffer.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as u64;
    }

    /// Reads what follows the buffer from the file; `false` when nothing more is there.
    fn fill(&mut self) -> Result<bool, String> {
        let Some((seg, file)) = &self.open else { return Ok(false) };
        let have = self.buf.len();
        self.buf.resize(have + CHUNK, 0);
        let read = file.read_at(&mut self.buf[have..], self.base + have as u64);
        let got = read.map_err(|e| format!("cannot read {}: {e}", seg.path.display()));
        self.buf.truncate(have + *got.as_ref().unwrap_or(&0));
        Ok(got? > 0)
    }

    /// Moves to the next segment once the writer has started it at `next_seq`; `false` when it
    /// has not (the current one may still grow).
    fn next_segment(&mut self) -> Result<bool, String> {
        let segments = list_segments(&self.dir).map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
        match segments.into_iter().find(|s| s.first_seq == self.next_seq) {
            Some(seg) if self.open.as_ref().is_none_or(|(s, _)| s.path != seg.path) => {
                self.open_segment(seg)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::EventKind;
    use crate::engine::types::KeyId;

    fn event(seq: u64) -> Event {
        Event { seq, ts: seq, kind: EventKind::KeyRevoked { key: KeyId(seq as u32) } }
    }

    fn segment(dir: &Path, first: u64, last: u64) -> PathBuf {
        let path = dir.join(format::segment_name(first));
        let mut bytes = format::segment_header(first).to_vec();
        for seq in first..=last {
            format::encode(&mut bytes, &event(seq));
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_all(t: &mut Tail, upto: u64, max: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        t.read(upto, max, |e| {
            seen.push(e.seq);
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn reads_across_segments_from_any_position_and_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 10);
        segment(dir.path(), 11, 25);
        let mut t = Tail::new(dir.path(), 4);
        assert_eq!(read_all(&mut t, u64::MAX, 5), vec![4, 5, 6, 7, 8]);
        assert_eq!(read_all(&mut t, 12, 100), vec![9, 10, 11, 12]);
        assert_eq!(read_all(&mut t, u64::MAX, 100), (13..=25).collect::<Vec<_>>());
        assert!(read_all(&mut t, u64::MAX, 100).is_empty());
        assert_eq!(t.next_seq(), 26);
    }

    #[test]
    fn picks_up_what_the_writer_adds_and_waits_for_a_record_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tail::new(dir.path(), 1);
        assert!(read_all(&mut t, u64::MAX, 100).is_empty(), "no segment yet");
        let path = segment(dir.path(), 1, 3);
        assert_eq!(read_all(&mut t, u64::MAX, 100), vec![1, 2, 3]);
        let mut more = Vec::new();
        format::encode(&mut more, &event(4));
        format::encode(&mut more, &event(5));
        let half = more.len() - 7;
        let append = |bytes: &[u8]| {
            use std::io::Write;
            std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(bytes).unwrap();
        };
        append(&more[..half]);
        assert_eq!(read_all(&mut t, u64::MAX, 100), vec![4]);
        append(&more[half..]);
        assert_eq!(read_all(&mut t, u64::MAX, 100), vec![5]);
    }

    #[test]
    fn records_that_straddle_read_chunks_come_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Several chunks' worth of records, read in steps that do not line up with them.
        let path = segment(dir.path(), 1, 60_000);
        assert!(std::fs::metadata(&path).unwrap().len() > 2 * CHUNK as u64);
        let mut t = Tail::new(dir.path(), 1);
        let mut next = 1;
        while next <= 60_000 {
            let seen = read_all(&mut t, u64::MAX, 7_777);
            assert!(!seen.is_empty());
            assert_eq!(seen, (next..next + seen.len() as u64).collect::<Vec<_>>());
            next += seen.len() as u64;
        }
        assert_eq!(t.next_seq(), 60_001);
    }

    #[test]
    fn a_gap_and_a_pruned_start_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 5, 6);
        let err = Tail::new(dir.path(), 2).read(u64::MAX, 10, |_| Ok(())).unwrap_err();
        assert!(err.contains("events 2..4 are no longer in the journal"), "{err}");
        segment(dir.path(), 1, 2);
        std::fs::rename(dir.path().join(format::segment_name(5)), dir.path().join(format::segment_name(3))).unwrap();
        let err = Tail::new(dir.path(), 1).read(u64::MAX, 10, |_| Ok(())).unwrap_err();
        assert!(err.contains("seq 5 where 3 was expected"), "{err}");
    }
}
