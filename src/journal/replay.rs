//! Rebuilding an engine from a data directory at start.

use std::path::Path;

use super::scan::{self, End, ScanError};
use crate::engine::venue::Venue;
use crate::engine::Engine;

/// Where appending continues: the last segment and the end of its good records (none for an
/// empty journal).
pub type Resume = Option<End>;

/// What a replay rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied from segments (after the snapshot, if there was one).
    pub events: u64,
    /// Last sequence number of the rebuilt state.
    pub last_seq: u64,
    /// Where the journal continues.
    pub resume: Resume,
}

/// Replays the journal in `dir` into `engine` (which must be empty). A torn tail is cut off with
/// a warning. Damage stops the start, naming file and offset, unless `repair` is set: then the
/// journal is cut back to the last good record and what was dropped is logged.
pub fn replay<V: Venue>(engine: &mut Engine<V>, dir: &Path, repair: bool) -> Result<Replayed, String> {
    let snapshot = super::snapshot::newest(dir).map_err(|e| format!("journal: cannot list snapshots: {e}"))?;
    let after = snapshot.as_ref().map_or(0, |s| s.last_seq);
    if let Some(state) = snapshot {
        engine.restore(state).map_err(|e| format!("journal: the snapshot at seq {after} does not fit: {e}"))?;
        log::info!("journal: restored the snapshot at seq {after}");
    }
    let mut events = 0u64;
    let result = scan::scan(dir, after, |e| {
        engine.apply_event(&e);
        events += 1;
        Ok(())
    });
    let (last_seq, resume) = match result {
        Ok(report) => {
            if let Some(t) = &report.torn {
                log::warn!(
                    "journal: {} ends with a partial record at offset {} ({} bytes, left by a crash); cutting it off",
                    t.path.display(),
                    t.offset,
                    t.bytes
                );
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&t.path)
                    .map_err(|e| format!("journal: cannot open {} to cut its torn tail: {e}", t.path.display()))?;
                f.set_len(t.offset)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("journal: cannot cut the torn tail of {}: {e}", t.path.display()))?;
            }
            if report.segments > 0 && report.first_seq > after + 1 {
                return Err(format!(
                    "journal: the segments in {} start at seq {} but the newest snapshot covers only up to seq {after}; \
                     events in between are missing",
                    dir.display(),
                    report.first_seq
                ));
            }
            (report.last_seq.max(after), report.end)
        }
        Err(ScanError::Damaged(d)) if repair => {
            let r = scan::repair(dir, &d).map_err(|e| format!("journal: repair failed: {e}"))?;
            log::warn!(
                "journal: repaired {d}: cut {} bytes from {}{}; the journal now ends at seq {}",
                r.cut_bytes,
                d.path.display(),
                if r.set_aside.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = r.set_aside.iter().map(|p| p.display().to_string()).collect();
                    format!(" and set aside {} later segment(s): {}", names.len(), names.join(", "))
                },
                d.last_good_seq
            );
            (d.last_good_seq, Some(r.end))
        }
        Err(ScanError::Damaged(d)) => {
            return Err(format!(
                "{d}. The node will not start on a damaged journal. To cut it back to seq {} (dropping every \
                 event after it, and keeping later segments as *.damaged), start once with --repair-journal; \
                 `signalgate journal verify {}` shows the same report",
                d.last_good_seq,
                dir.display()
            ))
        }
        Err(e) => return Err(format!("journal: {e}")),
    };
    Ok(Replayed { events, last_seq, resume })
}
