//! Where a server's core goes, per request: the core's user, system and interrupt time from
//! `/proc/stat`, and each thread of the server's processes from `/proc/PID/task/TID/stat`, read at
//! the start and the end of a window inside a round's measured time and divided by the requests of
//! that window (the caller's count: the round's rate times the window's length).

use std::collections::BTreeMap;
use std::time::Duration;

/// Clock ticks per second of `/proc` times (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU times, in clock ticks, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The core's user (with nice), system and interrupt (hard and soft) time.
    core: [u64; 3],
    /// User and system time by thread name (digits and a trailing `-` dropped, so that
    /// `iou-wrk-4711` and `sg-hot-1` group as `iou-wrk` and `sg-hot`), summed over threads.
    threads: BTreeMap<String, [u64; 2]>,
}

/// Reads the core's times and those of every thread of `pids` and their child processes (nginx's
/// worker is the master's child).
pub fn sample(core: usize, pids: &[u32]) -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        let name = format!("cpu{core}");
        if let Some(line) = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str())) {
            let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            if v.len() >= 7 {
                s.core = [v[0] + v[1], v[2], v[5] + v[6]];
            }
        }
    }
    let mut all: Vec<u32> = pids.to_vec();
    for pid in pids {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    for pid in all {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            // "tid (comm) state ppid … utime stime …": comm may hold spaces, so split after ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let comm = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('-');
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line; rest[0] is field 3.
            let (Some(u), Some(k)) =
                (rest.get(11).and_then(|x| x.parse::<u64>().ok()), rest.get(12).and_then(|x| x.parse::<u64>().ok()))
            else {
                continue;
            };
            let e = s.threads.entry(comm.to_owned()).or_default();
            e[0] += u;
            e[1] += k;
        }
    }
    s
}

/// CPU per request over a window: µs of the core (user, system, interrupts) and by thread.
#[derive(Debug, Clone, Default)]
pub struct PerRequest {
    /// The core: user, system, interrupts (µs per request).
    pub core: [f64; 3],
    /// By thread name: user, system (µs per request).
    pub threads: BTreeMap<String, [f64; 2]>,
}

impl PerRequest {
    /// The difference between two samples, over `requests` requests.
    pub fn between(a: &Sample, b: &Sample, requests: f64) -> PerRequest {
        let us = 1e6 / ticks_per_second() / requests.max(1.0);
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 * us;
        let mut threads = BTreeMap::new();
        for (name, after) in &b.threads {
            let before = a.threads.get(name).copied().unwrap_or_default();
            let t = [d(before[0], after[0]), d(before[1], after[1])];
            if t[0] + t[1] > 0.0 {
                threads.insert(name.clone(), t);
            }
        }
        PerRequest { core: [d(a.core[0], b.core[0]), d(a.core[1], b.core[1]), d(a.core[2], b.core[2])], threads }
    }

    /// The core's busy time per request.
    pub fn busy(&self) -> f64 {
        self.core.iter().sum()
    }

    /// As JSON, for the run's report.
    pub fn json(&self) -> serde_json::Value {
        let threads: serde_json::Map<String, serde_json::Value> = self
            .threads
            .iter()
            .map(|(name, t)| (name.clone(), serde_json::json!({"user": t[0], "system": t[1]})))
            .collect();
        serde_json::json!({
            "core": {"busy": self.busy(), "user": self.core[0], "system": self.core[1], "interrupts": self.core[2]},
            "threads": threads,
        })
    }
}

/// Samples `core` and `pids` once `skip` has passed and again `window` later, on a thread of its
/// own (pinned to `cpu`, the harness's core, when given); `join` gives both samples.
pub fn window(
    core: usize,
    pids: Vec<u32>,
    cpu: Option<usize>,
    skip: Duration,
    window: Duration,
) -> std::thread::JoinHandle<(Sample, Sample)> {
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            let _ = crate::load::pin_current(cpu);
        }
        std::thread::sleep(skip);
        let a = sample(core, &pids);
        std::thread::sleep(window);
        (a, sample(core, &pids))
    })
}

/// Medians over rounds, as a table row: core busy, user, system, interrupts, then each thread's
/// user + system.
pub fn row(name: &str, rounds: &[PerRequest]) -> String {
    let med = |mut v: Vec<f64>| crate::median(&mut v);
    let core: Vec<f64> = (0..3).map(|i| med(rounds.iter().map(|r| r.core[i]).collect())).collect();
    let busy = med(rounds.iter().map(PerRequest::busy).collect());
    let mut names: Vec<&String> = rounds.iter().flat_map(|r| r.threads.keys()).collect();
    names.sort();
    names.dedup();
    let mut threads: Vec<(f64, String)> = names
        .into_iter()
        .map(|n| {
            let t = |i: usize| med(rounds.iter().map(|r| r.threads.get(n).map_or(0.0, |t| t[i])).collect());
            let (u, k) = (t(0), t(1));
            (u + k, format!("{n} {u:.1} + {k:.1}"))
        })
        .filter(|(total, _)| *total >= 0.05)
        .collect();
    threads.sort_by(|a, b| b.0.total_cmp(&a.0));
    let threads: Vec<String> = threads.into_iter().map(|(_, s)| s).collect();
    format!("| {name} | {busy:.1} | {:.1} | {:.1} | {:.1} | {} |", core[0], core[1], core[2], threads.join(", "))
}
