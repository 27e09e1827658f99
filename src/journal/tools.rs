//! `signalgate journal verify` and `signalgate journal inspect`: the operator's view of a data
//! directory. Both only read; run them on a stopped node's directory or a copy (a running node
//! appends while they read, and its last record may look torn).

use std::io::Write;
use std::path::Path;

use super::scan::{self, ScanError};
use super::snapshot;

/// Exit code: the journal is sound (a torn tail is reported but is not damage).
pub const OK: u8 = 0;
/// Exit code: damage that stops a node from starting.
pub const DAMAGED: u8 = 1;
/// Exit code: the directory or a file could not be read.
pub const UNREADABLE: u8 = 2;

/// Checks every snapshot and every record of the journal in `dir` (lengths, checksums, headers,
/// sequence numbers, decoding, and that the snapshots cover any pruned start); writes a report
/// to `out` and returns the exit code.
pub fn verify(dir: &Path, out: &mut impl Write) -> std::io::Result<u8> {
    // Snapshots first: the segments may start after the first event when a snapshot covers it.
    let mut covered = 0;
    for (seq, path) in snapshot::list(dir)? {
        match snapshot::read(&path) {
            Ok(_) => {
                writeln!(out, "snapshot {}: ok, state at seq {seq}", path.display())?;
                covered = seq;
            }
            Err(e) => writeln!(out, "warning: {e}; a node uses the newest good snapshot")?,
        }
    }
    match scan::scan(dir, 0, |_| Ok(())) {
        Ok(r) => {
            if r.segments == 0 {
                writeln!(out, "{}: no journal segments (an empty journal)", dir.display())?;
                return Ok(OK);
            }
            if r.first_seq > covered + 1 {
                writeln!(
                    out,
                    "{}: the segments start at seq {} but no good snapshot covers the events before it",
                    dir.display(),
                    r.first_seq
                )?;
                return Ok(DAMAGED);
            }
            writeln!(
                out,
                "{}: ok: {} segment(s), {} events, seq {}..={}",
                dir.display(),
                r.segments,
                r.records,
                r.first_seq,
                r.last_seq
            )?;
            if let Some(t) = r.torn {
                writeln!(
                    out,
                    "warning: {} ends with a partial record at offset {} ({} bytes); a node cuts it off at start",
                    t.path.display(),
                    t.offset,
                    t.bytes
                )?;
            }
            Ok(OK)
        }
        Err(ScanError::Damaged(d)) => {
            writeln!(out, "{d}")?;
            writeln!(
                out,
                "a node refuses to start on this journal; `signalgate run --repair-journal` cuts it back to seq {}",
                d.last_good_seq
            )?;
            Ok(DAMAGED)
        }
        Err(e) => {
            writeln!(out, "{e}")?;
            Ok(UNREADABLE)
        }
    }
}

/// Writes the events from seq `from` on, one per line: human-readable, or JSON objects
/// (`--json`). Returns the exit code; damage is reported after the events before it.
pub fn inspect(dir: &Path, from: u64, json: bool, out: &mut impl Write) -> std::io::Result<u8> {
    let mut failed: Option<std::io::Error> = None;
    let result = scan::scan(dir, from.saturating_sub(1), |e| {
        let r = if json {
            serde_json::to_writer(&mut *out, &e).map_err(std::io::Error::from).and_then(|()| writeln!(out))
        } else {
            writeln!(out, "{:>10} {} {:?}", e.seq, crate::clock::format_nanos(e.ts), e.kind)
        };
        r.map_err(|err| {
            let msg = err.to_string();
            failed = Some(err);
            msg
        })
    });
    if let Some(e) = failed {
        // A closed pipe (`| head`) ends the listing quietly.
        return if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(OK) } else { Err(e) };
    }
    match result {
        Ok(_) => Ok(OK),
        Err(ScanError::Damaged(d)) => {
            eprintln!("{d}");
            Ok(DAMAGED)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(UNREADABLE)
        }
    }
}
