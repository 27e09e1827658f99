//! `signalgate tune check`: reads the host and says, item by item, whether it suits the node's
//! topology — ok, warn or fail, each with the fix.
//!
//! Host facts come from `/proc` and `/sys` under a root directory (so tests can hand in a fake
//! tree) plus two system calls (resource limits, an io_uring probe). Nothing is changed.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::Config;

/// How an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but latency or capacity suffers.
    Warn,
    /// The node will not run well, or at all.
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Short name.
    pub name: &'static str,
    /// Verdict.
    pub level: Level,
    /// What was found.
    pub found: String,
    /// What to do about it (for warn and fail).
    pub fix: Option<String>,
}

/// What the checks read from the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root under which `/proc` and `/sys` are read (`/` normally).
    pub root: PathBuf,
    /// Online core ids.
    pub cores: Vec<usize>,
    /// Soft RLIMIT_MEMLOCK in bytes (`None` = unlimited).
    pub memlock: Option<u64>,
    /// Soft RLIMIT_NOFILE.
    pub nofile: Option<u64>,
    /// Whether the process may lock memory regardless of the limit (root / CAP_IPC_LOCK).
    pub memlock_exempt: bool,
    /// Result of trying to create an io_uring.
    pub io_uring: Result<(), String>,
}

impl Host {
    /// The machine this process runs on.
    pub fn current() -> Host {
        Host {
            root: PathBuf::from("/"),
            cores: crate::cores::host_cores(),
            memlock: rlimit(libc::RLIMIT_MEMLOCK),
            nofile: rlimit(libc::RLIMIT_NOFILE),
            // SAFETY: geteuid has no preconditions.
            memlock_exempt: unsafe { libc::geteuid() } == 0,
            io_uring: probe_io_uring(),
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/'))).ok().map(|s| s.trim().to_string())
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_cur)
}

fn probe_io_uring() -> Result<(), String> {
    // io_uring_params is 120 bytes; zeroed is a valid request for a ring of one entry.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes the params buffer we own; the fd it returns is
    // closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd is a descriptor io_uring_setup just gave us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

fn cpu_list(cores: &[usize]) -> String {
    cores.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Every core the node uses (hot and fan-out), sorted, once each.
fn node_cores(cfg: &Config) -> Vec<usize> {
    let mut v: Vec<usize> = cfg.topology.hot.iter().chain(&cfg.topology.fanout).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The cores to isolate for this topology, and the cores left to the operating system.
pub fn isolation_plan(cfg: &Config, cores: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut node = node_cores(cfg);
    let mut rest: Vec<usize> = cores.iter().copied().filter(|c| !node.contains(c)).collect();
    if rest.is_empty() {
        // Keep at least one core for the kernel and everything else: isolate the hot core only.
        node = cfg.topology.hot.clone();
        rest = cores.iter().copied().filter(|c| !node.contains(c)).collect();
    }
    if rest.is_empty() {
        return (Vec::new(), rest);
    }
    (node, rest)
}

/// The suggested kernel command line for the topology (empty when nothing can be isolated).
pub fn kernel_cmdline(cfg: &Config, cores: &[usize]) -> String {
    let (isolate, housekeeping) = isolation_plan(cfg, cores);
    cmdline_for(&isolate, &housekeeping)
}

fn cmdline_for(isolate: &[usize], housekeeping: &[usize]) -> String {
    if isolate.is_empty() {
        return String::new();
    }
    let iso = cpu_list(isolate);
    format!("isolcpus=managed_irq,domain,{iso} nohz_full={iso} rcu_nocbs={iso} irqaffinity={}", cpu_list(housekeeping))
}

/// Runs every check.
pub fn check(cfg: &Config, host: &Host) -> Vec<Item> {
    let mut items = Vec::new();
    let mut push = |name, level, found: String, fix: Option<String>| items.push(Item { name, level, found, fix });
    let node_cores = node_cores(cfg);

    let missing: Vec<usize> = node_cores.iter().copied().filter(|c| !host.cores.contains(c)).collect();
    if missing.is_empty() {
        push(
            "cores",
            Level::Ok,
            format!(
                "hot {:?} and fan-out {:?} exist (host cores {})",
                cfg.topology.hot,
                cfg.topology.fanout,
                cpu_list(&host.cores)
            ),
            None,
        );
    } else {
        push(
            "cores",
            Level::Fail,
            format!("core(s) {} do not exist (host cores {})", cpu_list(&missing), cpu_list(&host.cores)),
            Some("set [topology] hot and fanout to existing cores".into()),
        );
    }

    let (isolate, housekeeping) = isolation_plan(cfg, &host.cores);
    let cmdline = cmdline_for(&isolate, &housekeeping);
    let isolated = parse_cpu_list(&host.read("/sys/devices/system/cpu/isolated").unwrap_or_default());
    let fix_cmdline = || {
        if cmdline.is_empty() {
            "give the host more cores: with so few, none can be isolated".to_string()
        } else {
            format!("add to the kernel command line, then reboot: {cmdline} (see docs/operations.md)")
        }
    };
    let not_isolated: Vec<usize> = isolate.iter().copied().filter(|c| !isolated.contains(c)).collect();
    if isolate.is_empty() {
        push("isolation", Level::Warn, "too few cores to isolate any from the kernel".into(), Some(fix_cmdline()));
    } else if not_isolated.is_empty() {
        push("isolation", Level::Ok, format!("core(s) {} isolated", cpu_list(&isolate)), None);
    } else {
        push(
            "isolation",
            Level::Warn,
            format!("core(s) {} not isolated", cpu_list(&not_isolated)),
            Some(fix_cmdline()),
        );
    }

    let nohz = parse_cpu_list(&host.read("/sys/devices/system/cpu/nohz_full").unwrap_or_default());
    let ticking: Vec<usize> = isolate.iter().copied().filter(|c| !nohz.contains(c)).collect();
    if isolate.is_empty() {
        push("nohz_full", Level::Warn, "too few cores to take any off the scheduler tick".into(), Some(fix_cmdline()));
    } else if ticking.is_empty() {
        push("nohz_full", Level::Ok, format!("core(s) {} run without the scheduler tick", cpu_list(&isolate)), None);
    } else {
        push(
            "nohz_full",
            Level::Warn,
            format!("the scheduler tick still interrupts core(s) {}", cpu_list(&ticking)),
            Some(fix_cmdline()),
        );
    }

    let mut slow = Vec::new();
    let mut seen_any = false;
    for c in &node_cores {
        if let Some(g) = host.read(&format!("/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")) {
            seen_any = true;
            if g != "performance" {
                slow.push(format!("core {c}: {g}"));
            }
        }
    }
    match (seen_any, slow.is_empty()) {
        (false, _) => {
            push("governor", Level::Ok, "no cpufreq control (fixed frequency or a virtual machine)".into(), None)
        }
        (true, true) => push("governor", Level::Ok, "performance on every node core".into(), None),
        (true, false) => push(
            "governor",
            Level::Warn,
            slow.join(", "),
            Some("tuning/host-tuning.sh apply (sets the performance governor)".into()),
        ),
    }

    match host.read("/sys/kernel/mm/transparent_hugepage/enabled") {
        None => push("thp", Level::Ok, "transparent huge pages not available".into(), None),
        Some(t) if t.contains("[always]") => push(
            "thp",
            Level::Warn,
            format!("transparent huge pages: {t}"),
            Some("tuning/host-tuning.sh apply (sets madvise: no compaction stalls on the hot core)".into()),
        ),
        Some(t) => push("thp", Level::Ok, format!("transparent huge pages: {t}"), None),
    }

    let executors = (cfg.topology.hot.len() + cfg.topology.fanout.len()) as u64;
    let needed = executors * 3 * cfg.topology.io_memory_kib as u64 * 1024;
    match (host.memlock_exempt, host.memlock) {
        (true, _) => push("memlock", Level::Ok, "running as root: io_uring memory is not limited".into(), None),
        (false, None) => push("memlock", Level::Ok, "unlimited".into(), None),
        (false, Some(l)) if l >= needed => {
            push("memlock", Level::Ok, format!("{} KiB ≥ {} KiB needed", l / 1024, needed / 1024), None)
        }
        (false, Some(l)) => push(
            "memlock",
            Level::Fail,
            format!(
                "{} KiB < {} KiB the executors register with io_uring ({executors} × 3 × io_memory_kib)",
                l / 1024,
                needed / 1024
            ),
            Some("LimitMEMLOCK=64M in the unit (shipped), or tuning/limits.d/signalgate.conf".into()),
        ),
    }

    let want_files = cfg.http.max_connections as u64 + 1024;
    match host.nofile {
        None => push("nofile", Level::Ok, "unlimited".into(), None),
        Some(n) if n >= want_files => push("nofile", Level::Ok, format!("{n} ≥ {want_files}"), None),
        Some(n) => push(
            "nofile",
            Level::Warn,
            format!("{n} open files < http.max_connections + 1024 = {want_files}"),
            Some("LimitNOFILE=1048576 in the unit (shipped), or tuning/limits.d/signalgate.conf".into()),
        ),
    }

    let backlog = cfg.http.backlog.max(0) as u64;
    match host.read("/proc/sys/net/core/somaxconn").and_then(|s| s.parse::<u64>().ok()) {
        Some(s) if s >= backlog => push("somaxconn", Level::Ok, format!("{s} ≥ http.backlog {backlog}"), None),
        Some(s) => push(
            "somaxconn",
            Level::Warn,
            format!("{s} < http.backlog {backlog}: the kernel shortens the listen queue"),
            Some("tuning/sysctl.d/60-signalgate.conf (net.core.somaxconn = 4096), then sysctl --system".into()),
        ),
        None => push("somaxconn", Level::Warn, "cannot read /proc/sys/net/core/somaxconn".into(), None),
    }

    let disabled = host.read("/proc/sys/kernel/io_uring_disabled").and_then(|s| s.parse::<u8>().ok()).unwrap_or(0);
    match (&host.io_uring, disabled) {
        (Ok(()), _) => push("io_uring", Level::Ok, "an io_uring can be created".into(), None),
        (Err(e), d) => push(
            "io_uring",
            Level::Fail,
            format!("io_uring_setup failed: {e} (kernel.io_uring_disabled = {d})"),
            Some("Linux 5.8 or newer with kernel.io_uring_disabled = 0 (tuning/sysctl.d/60-signalgate.conf)".into()),
        ),
    }
    items
}

/// Renders the report; returns it with the process exit code (1 when anything failed).
pub fn report(items: &[Item]) -> (String, u8) {
    let mut out = String::new();
    for i in items {
        let _ = writeln!(out, "{:<5} {:<10} {}", i.level.as_str(), i.name, i.found);
        if let Some(fix) = &i.fix {
            let _ = writeln!(out, "{:<16} fix: {fix}", "");
        }
    }
    let count = |l: Level| items.iter().filter(|i| i.level == l).count();
    let _ = writeln!(out, "{} ok, {} warn, {} fail", count(Level::Ok), count(Level::Warn), count(Level::Fail));
    (out, u8::from(count(Level::Fail) > 0))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Writes a fake host tree.
    fn write_fake(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let p = root.join(path.trim_start_matches('/'));
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(p, content);
        }
    }

    fn cfg(hot: usize, fanout: usize) -> Config {
        let mut c = Config::default();
        c.topology.hot = vec![hot];
        c.topology.fanout = vec![fanout];
        c
    }

    fn host(root: &Path, cores: usize) -> Host {
        Host {
            root: root.to_path_buf(),
            cores: (0..cores).collect(),
            memlock: Some(8 * 1024 * 1024),
            nofile: Some(1024),
            memlock_exempt: false,
            io_uring: Ok(()),
        }
    }

    fn level(items: &[Item], name: &str) -> Level {
        items.iter().find(|i| i.name == name).unwrap().level
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("x,2"), vec![2]);
    }

    #[test]
    fn the_kernel_line_follows_the_topology() {
        let cores: Vec<usize> = (0..8).collect();
        assert_eq!(
            kernel_cmdline(&cfg(2, 3), &cores),
            "isolcpus=managed_irq,domain,2,3 nohz_full=2,3 rcu_nocbs=2,3 irqaffinity=0,1,4,5,6,7"
        );
        assert_eq!(
            kernel_cmdline(&cfg(0, 1), &[0, 1]),
            "isolcpus=managed_irq,domain,0 nohz_full=0 rcu_nocbs=0 irqaffinity=1"
        );
        assert_eq!(kernel_cmdline(&cfg(0, 0), &[0]), "");
    }

    #[test]
    fn a_tuned_host_is_all_ok() {
        let dir = tempfile::tempdir().unwrap();
        write_fake(
            dir.path(),
            &[
                ("sys/devices/system/cpu/isolated", "2-3\n"),
                ("sys/devices/system/cpu/nohz_full", "2-3\n"),
                ("sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "performance\n"),
                ("sys/devices/system/cpu/cpu3/cpufreq/scaling_governor", "performance\n"),
                ("sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n"),
                ("proc/sys/net/core/somaxconn", "4096\n"),
            ],
        );
        let mut h = host(dir.path(), 8);
        h.nofile = Some(1_048_576);
        let items = check(&cfg(2, 3), &h);
        assert!(items.iter().all(|i| i.level == Level::Ok), "{items:#?}");
        let (text, code) = report(&items);
        assert_eq!(code, 0);
        assert!(text.ends_with("9 ok, 0 warn, 0 fail\n"), "{text}");
    }

    #[test]
    fn an_untuned_host_gets_warnings_and_fixes() {
        let dir = tempfile::tempdir().unwrap();
        write_fake(
            dir.path(),
            &[
                ("sys/devices/system/cpu/isolated", "\n"),
                ("sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "powersave\n"),
                ("sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n"),
                ("proc/sys/net/core/somaxconn", "128\n"),
            ],
        );
        let items = check(&cfg(2, 3), &host(dir.path(), 8));
        for name in ["isolation", "nohz_full", "governor", "thp", "nofile", "somaxconn"] {
            let item = items.iter().find(|i| i.name == name).unwrap();
            assert_eq!(item.level, Level::Warn, "{item:?}");
            assert!(item.fix.is_some(), "{item:?}");
        }
        assert!(items
            .iter()
            .find(|i| i.name == "isolation")
            .unwrap()
            .fix
            .as_ref()
            .unwrap()
            .contains("isolcpus=managed_irq,domain,2,3"));
        assert_eq!(report(&items).1, 0, "warnings do not fail");
    }

    #[test]
    fn failures_set_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = host(dir.path(), 2);
        h.memlock = Some(64 * 1024);
        h.io_uring = Err("Operation not permitted".into());
        let items = check(&cfg(0, 5), &h);
        assert_eq!(level(&items, "cores"), Level::Fail);
        assert_eq!(level(&items, "memlock"), Level::Fail);
        assert_eq!(level(&items, "io_uring"), Level::Fail);
        let (text, code) = report(&items);
        assert_eq!(code, 1);
        assert!(text.contains("fail  io_uring"), "{text}");
        h.memlock_exempt = true;
        assert_eq!(level(&check(&cfg(0, 1), &h), "memlock"), Level::Ok);
    }
}
