//! Reading a journal directory back: replay at start, `journal verify` and `journal inspect`.
//!
//! Reading is plain blocking file I/O: it happens before the node serves anything, or in an
//! operator's command.

use std::fmt;
use std::path::{Path, PathBuf};

use super::format::{self, Bad, Version, RECORD_HEADER, SEGMENT_HEADER};
use crate::engine::event::Event;

/// A segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// The sequence number its name gives to its first record.
    pub first_seq: u64,
}

/// The segments of `dir`, oldest first. A missing directory has none.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let files = format::list_numbered(dir, "", format::SEGMENT_SUFFIX)?;
    Ok(files.into_iter().map(|(first_seq, path)| Segment { path, first_seq }).collect())
}

/// Damage that is not a torn tail: the journal cannot be trusted past `offset` of `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file.
    pub path: PathBuf,
    /// The sequence number its name gives to its first record.
    pub first_seq: u64,
    /// Where the damage starts.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// The last good sequence number before it.
    pub last_good_seq: u64,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal damaged in {} at offset {}: {} (last good event: seq {})",
            self.path.display(),
            self.offset,
            self.what,
            self.last_good_seq
        )
    }
}

/// Why a scan stopped early.
#[derive(Debug)]
pub enum ScanError {
    /// The directory or a file could not be read.
    Io(PathBuf, std::io::Error),
    /// Real damage.
    Damaged(Damage),
    /// The caller's callback refused an event.
    Stopped(String),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ScanError::Damaged(d) => d.fmt(f),
            ScanError::Stopped(why) => f.write_str(why),
        }
    }
}

/// A partial last record, as a crash leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The last segment.
    pub path: PathBuf,
    /// Where the partial record starts (the length to cut the file back to).
    pub offset: u64,
    /// Bytes after it.
    pub bytes: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Segment files.
    pub segments: usize,
    /// Records read (including those skipped as already covered).
    pub records: u64,
    /// First sequence number in the journal (0 when empty).
    pub first_seq: u64,
    /// Last good sequence number (0 when empty).
    pub last_seq: u64,
    /// A torn tail, if the last segment ends with one.
    pub torn: Option<TornTail>,
    /// Where appending continues: the last segment and the end of its good records.
    pub end: Option<End>,
}

/// The last segment of a journal and where its good records end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The segment.
    pub segment: Segment,
    /// Its format.
    pub version: Version,
    /// The offset just past its last good record.
    pub len: u64,
}

/// Reads every record in order, checking lengths, checksums, the segment headers and that
/// sequence numbers run without gaps; calls `f` with each event whose seq is above `after`.
/// A version 2 segment's records end at a length of zero. A bad record is a torn tail only when
/// it is in the last segment, no good record follows it, and it is what a crash leaves (see
/// [`torn`]).
pub fn scan(dir: &Path, after: u64, mut f: impl FnMut(Event) -> Result<(), String>) -> Result<Report, ScanError> {
    let segments = list_segments(dir).map_err(|e| ScanError::Io(dir.to_path_buf(), e))?;
    let mut report = Report { segments: segments.len(), ..Report::default() };
    let mut expected: Option<u64> = None;
    for (i, seg) in segments.iter().enumerate() {
        let last_segment = i + 1 == segments.len();
        // A segment entirely before `after` need not be read when the next one proves where it ends.
        if segments.get(i + 1).is_some_and(|next| next.first_seq <= after + 1) {
            report.first_seq = if report.first_seq == 0 { seg.first_seq } else { report.first_seq };
            expected = Some(segments[i + 1].first_seq);
            report.last_seq = segments[i + 1].first_seq - 1;
            continue;
        }
        let buf = std::fs::read(&seg.path).map_err(|e| ScanError::Io(seg.path.clone(), e))?;
        let damage = |offset: usize, what: String, last_good_seq: u64| {
            ScanError::Damaged(Damage {
                path: seg.path.clone(),
                first_seq: seg.first_seq,
                offset: offset as u64,
                what,
                last_good_seq,
            })
        };
        let version = match format::read_header(&buf) {
            Some((first, v)) if first == seg.first_seq => v,
            Some((first, _)) => {
                return Err(damage(
                    0,
                    format!("header says first seq {first}, name says {}", seg.first_seq),
                    report.last_seq,
                ))
            }
            None if last_segment && (buf.len() < SEGMENT_HEADER || buf.iter().all(|&b| b == 0)) => {
                // Created, but the crash came before its header was written.
                report.torn = Some(TornTail { path: seg.path.clone(), offset: 0, bytes: buf.len() as u64 });
                report.end = Some(End { segment: seg.clone(), version: Version::V2, len: 0 });
                return Ok(report);
            }
            None => return Err(damage(0, "not a journal segment (bad header)".into(), report.last_seq)),
        };
        if let Some(want) = expected {
            if seg.first_seq != want {
                return Err(damage(
                    0,
                    format!("segment starts at seq {}, expected {want}", seg.first_seq),
                    report.last_seq,
                ));
            }
        } else {
            report.first_seq = seg.first_seq;
        }
        let mut off = SEGMENT_HEADER;
        let mut next_seq = seg.first_seq;
        while off < buf.len() {
            match format::read_at(&buf, off, version) {
                Ok(rec) => {
                    if rec.seq != next_seq {
                        return Err(damage(
                            off,
                            format!("seq {} where {next_seq} was expected", rec.seq),
                            report.last_seq,
                        ));
                    }
                    if rec.seq > after {
                        let event =
                            format::decode(rec.payload, version).map_err(|e| damage(off, e, report.last_seq))?;
                        f(event).map_err(ScanError::Stopped)?;
                    }
                    report.records += 1;
                    report.last_seq = rec.seq;
                    next_seq += 1;
                    off = rec.next;
                }
                // A version 2 segment's records end here; the rest is its preallocated space.
                Err(Bad::End) => break,
                Err(bad) => {
                    if !last_segment
                        || !torn(&buf, off, bad, version)
                        || good_record_after(&buf, off, report.last_seq, version)
                    {
                        return Err(damage(off, bad.to_string(), report.last_seq));
                    }
                    report.torn =
                        Some(TornTail { path: seg.path.clone(), offset: off as u64, bytes: (buf.len() - off) as u64 });
                    break;
                }
            }
        }
        expected = Some(next_seq);
        if last_segment {
            let good = report.torn.as_ref().map_or(off.min(buf.len()) as u64, |t| t.offset);
            report.end = Some(End { segment: seg.clone(), version, len: good });
        }
    }
    Ok(report)
}

/// Whether the bad bytes at `off`, the end of the last segment, are what a crash leaves:
/// - a record cut short (the file ends inside it), or zeros never written;
/// - in a version 2 segment, after a power loss, a record whose first page reached the disk and
///   whose later page did not: its bytes from a page boundary on are zeros, and so is everything
///   after it.
///
/// A record that is all there but whose checksum or length is wrong is damage, even at the very
/// end: it may be an acknowledged order, and cutting it would lose it without a word.
fn torn(buf: &[u8], off: usize, bad: Bad, version: Version) -> bool {
    const PAGE: usize = 4096;
    if bad == Bad::Short || buf[off..].iter().all(|&b| b == 0) {
        return true;
    }
    if version != Version::V2 || bad != Bad::Checksum {
        return false;
    }
    let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
    let end = off + RECORD_HEADER + len;
    let boundary = (off + 1).next_multiple_of(PAGE);
    boundary < end && buf[boundary..].iter().all(|&b| b == 0)
}

/// Whether a good record with a later sequence number starts anywhere after `off`: then the bad
/// bytes at `off` are damage in the middle, not a write cut short by a crash.
fn good_record_after(buf: &[u8], off: usize, last_seq: u64, version: Version) -> bool {
    let step = if version == Version::V2 { format::RECORD_ALIGN } else { 1 };
    (off + 1..buf.len())
        .filter(|o| o % step == 0)
        .any(|o| matches!(format::read_at(buf, o, version), Ok(r) if r.seq > last_seq))
}

/// What `repair` set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut from the damaged segment.
    pub cut_bytes: u64,
    /// Later segments renamed to `*.damaged`.
    pub set_aside: Vec<PathBuf>,
    /// Where appending continues.
    pub end: End,
}

/// Cuts the journal back to its last good record before `damage`: the damaged segment is
/// truncated at the damage and every later segment is renamed to `<name>.damaged` (kept for
/// inspection, never read again).
pub fn repair(dir: &Path, damage: &Damage) -> std::io::Result<Repair> {
    let len = std::fs::metadata(&damage.path)?.len();
    let file = std::fs::OpenOptions::new().write(true).open(&damage.path)?;
    // A segment cut back to nothing but a broken header is rewritten as an empty segment.
    let keep = damage.offset.max(SEGMENT_HEADER as u64);
    if damage.offset < SEGMENT_HEADER as u64 {
        std::os::unix::fs::FileExt::write_all_at(&file, &format::segment_header(damage.first_seq), 0)?;
    }
    file.set_len(keep)?;
    file.sync_all()?;
    let mut set_aside = Vec::new();
    for seg in list_segments(dir)? {
        if seg.first_seq > damage.first_seq {
            let mut to = seg.path.clone().into_os_string();
            to.push(".damaged");
            std::fs::rename(&seg.path, &to)?;
            set_aside.push(PathBuf::from(to));
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    let mut header = [0; SEGMENT_HEADER];
    std::os::unix::fs::FileExt::read_exact_at(&file_for_read(&damage.path)?, &mut header, 0)?;
    let version = format::read_header(&header).map_or(Version::V2, |(_, v)| v);
    let segment = Segment { path: damage.path.clone(), first_seq: damage.first_seq };
    Ok(Repair { cut_bytes: len.saturating_sub(keep), set_aside, end: End { segment, version, len: keep } })
}

fn file_for_read(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::EventKind;
    use crate::engine::market::Quote;
    use crate::engine::types::SymbolId;

    fn event(seq: u64) -> Event {
        let q = Quote { symbol: SymbolId(0), bid: 10, ask: 11, bid_size: 1, ask_size: 1, ts: seq };
        Event { seq, ts: seq, kind: EventKind::Quote(q) }
    }

    /// Writes a segment holding `seqs`; returns its path and the offset of each record.
    fn segment(dir: &Path, first: u64, seqs: std::ops::RangeInclusive<u64>) -> (PathBuf, Vec<usize>) {
        let mut buf = format::segment_header(first).to_vec();
        let mut offsets = Vec::new();
        for s in seqs {
            offsets.push(buf.len());
            format::encode(&mut buf, &event(s));
        }
        let path = dir.join(format::segment_name(first));
        std::fs::write(&path, &buf).unwrap();
        (path, offsets)
    }

    fn seqs(dir: &Path, after: u64) -> Result<(Vec<u64>, Report), ScanError> {
        let mut v = Vec::new();
        let r = scan(dir, after, |e| {
            v.push(e.seq);
            Ok(())
        })?;
        Ok((v, r))
    }

    #[test]
    fn reads_segments_in_order_and_skips_covered_events() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 1..=3);
        segment(dir.path(), 4, 4..=6);
        let (v, r) = seqs(dir.path(), 0).unwrap();
        assert_eq!(v, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!((r.segments, r.records, r.first_seq, r.last_seq, r.torn), (2, 6, 1, 6, None));
        let (v, r) = seqs(dir.path(), 4).unwrap();
        assert_eq!((v, r.last_seq), (vec![5, 6], 6));
        assert_eq!(r.end.unwrap().segment.first_seq, 4);
        assert_eq!(seqs(tempfile::tempdir().unwrap().path(), 0).unwrap().0, Vec::<u64>::new());
    }

    #[test]
    fn a_partial_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = segment(dir.path(), 1, 1..=3);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (v, r) = seqs(dir.path(), 0).unwrap();
        assert_eq!(v, vec![1, 2]);
        let torn = r.torn.unwrap();
        assert_eq!((torn.offset, torn.bytes), (offsets[2] as u64, (full.len() - 5 - offsets[2]) as u64));
        assert_eq!(r.end.unwrap().len, offsets[2] as u64);
    }

    #[test]
    fn a_complete_last_record_that_fails_its_checksum_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = segment(dir.path(), 1, 1..=3);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        match seqs(dir.path(), 0) {
            Err(ScanError::Damaged(d)) => {
                assert_eq!((d.offset, d.last_good_seq), (offsets[2] as u64, 2));
                assert!(d.what.contains("checksum"), "{d}");
            }
            other => panic!("a flipped bit in the last record must be damage: {other:?}"),
        }
        // Zeros after the last record are the segment's unused, preallocated space: where its
        // records end, not a tail to cut.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 1..=3);
        let path = dir.path().join(format::segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let (v, r) = seqs(dir.path(), 0).unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        assert_eq!((r.torn, r.end.unwrap().len), (None, end as u64));
    }

    #[test]
    fn a_bad_record_before_good_ones_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = segment(dir.path(), 1, 1..=3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] + RECORD_HEADER_PROBE] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match seqs(dir.path(), 0) {
            Err(ScanError::Damaged(d)) => {
                assert_eq!((d.offset, d.last_good_seq), (offsets[1] as u64, 1));
                assert!(d.to_string().contains("checksum"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        // Damage in a segment that is not the last is damage even at its end.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = segment(dir.path(), 1, 1..=3);
        segment(dir.path(), 4, 4..=4);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        assert!(matches!(seqs(dir.path(), 0), Err(ScanError::Damaged(_))));
    }

    #[test]
    fn gaps_and_mismatched_headers_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 1..=3);
        segment(dir.path(), 5, 5..=6);
        match seqs(dir.path(), 0) {
            Err(ScanError::Damaged(d)) => assert!(d.what.contains("expected 4"), "{d}"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = segment(dir.path(), 1, 1..=3);
        std::fs::rename(&path, dir.path().join(format::segment_name(2))).unwrap();
        assert!(matches!(seqs(dir.path(), 0), Err(ScanError::Damaged(_))));
    }

    #[test]
    fn repair_cuts_at_the_damage_and_sets_later_segments_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = segment(dir.path(), 1, 1..=3);
        segment(dir.path(), 4, 4..=5);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] + RECORD_HEADER_PROBE] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let Err(ScanError::Damaged(d)) = seqs(dir.path(), 0) else { panic!("damage expected") };
        let r = repair(dir.path(), &d).unwrap();
        assert_eq!(r.cut_bytes, (bytes.len() - offsets[1]) as u64);
        assert_eq!(r.set_aside.len(), 1);
        assert!(r.set_aside[0].to_string_lossy().ends_with(".seg.damaged"));
        let (v, _) = seqs(dir.path(), 0).unwrap();
        assert_eq!(v, vec![1]);
    }

    /// A byte inside a record's payload.
    const RECORD_HEADER_PROBE: usize = format::RECORD_HEADER + 3;
}
