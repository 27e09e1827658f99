//! Host tuning: `signalgate tune check` on this machine, and the shipped tuning files.

mod support;

use std::process::Command;

const ITEMS: [&str; 9] =
    ["cores", "isolation", "nohz_full", "governor", "thp", "memlock", "nofile", "somaxconn", "io_uring"];

fn tune_check(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out =
        Command::new(support::binary()).args(["tune", "check"]).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn tune_check_prints_every_item_and_exits_as_documented() {
    let (code, out) = tune_check(&[], &[]);
    for item in ITEMS {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(item))
            .unwrap_or_else(|| panic!("{item} missing:\n{out}"));
        assert!(["ok", "warn", "fail"].contains(&line.split_whitespace().next().unwrap()), "{line}");
    }
    // Every warning or failure says how to fix it.
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("warn") || l.starts_with("fail") {
            let next = lines.get(i + 1).unwrap_or(&"");
            assert!(next.trim_start().starts_with("fix: "), "{l}\n{next}");
        }
    }
    let summary = out.lines().last().unwrap();
    let fails: usize = summary.split(", ").nth(2).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(code, i32::from(fails > 0), "{out}");
}

#[test]
fn tune_check_fails_for_a_core_the_host_lacks() {
    let (code, out) = tune_check(&[], &[("SIGNALGATE_TOPOLOGY_HOT", "[4096]")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fail  cores") && out.contains("4096"), "{out}");
}

#[test]
fn every_sysctl_key_shipped_exists_on_this_kernel() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/sysctl.d/60-signalgate.conf")).unwrap();
    let mut n = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key = value: {line}"));
        let path = format!("/proc/sys/{}", key.trim().replace('.', "/"));
        assert!(std::path::Path::new(&path).exists(), "{key} does not exist on this kernel");
        assert!(value.split_whitespace().all(|v| v.parse::<i64>().is_ok()), "{line}");
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn limits_and_scripts_are_well_formed() {
    let limits =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/limits.d/signalgate.conf")).unwrap();
    for line in limits.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{line}");
        assert!(
            ["soft", "hard"].contains(&f[1]) && ["nofile", "memlock"].contains(&f[2]) && f[3].parse::<u64>().is_ok(),
            "{line}"
        );
    }
    for script in ["tuning/irq-affinity.sh", "tuning/host-tuning.sh"] {
        let path = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
        assert!(Command::new("bash").arg("-n").arg(&path).status().unwrap().success(), "{script}");
    }
    let show =
        Command::new(format!("{}/tuning/irq-affinity.sh", env!("CARGO_MANIFEST_DIR"))).arg("--show").output().unwrap();
    assert!(show.status.success());
    assert!(!show.stdout.is_empty());
}

#[test]
fn thread_cpu_shows_each_node_thread_per_window() {
    let node = support::Node::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/thread-cpu");
    let out = Command::new(script).args([&node.node_pid().to_string(), "0.35", "100"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // One line per 100 ms window over 0.35 s (a window a slow machine sleeps through merges).
    assert!((2..=3).contains(&lines.len()), "{text}");
    for l in &lines {
        for thread in ["sg-hot-", "sg-fanout-", "sg-snapshot"] {
            assert!(l.contains(thread), "{thread} in {l}");
        }
        assert!(l.contains(" u") && l.contains(" s"), "{l}");
    }
    let out = Command::new(script).arg("4000000000").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process 4000000000"));
}

#[test]
fn io_sleeps_shows_where_the_journal_threads_sleep() {
    // The default journal (`interval`): an fdatasync on the journal's sync thread every 10 ms,
    // each sleeping while the disk flushes, as long as signals keep coming.
    let node = support::Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/io-sleeps");
    let mut child = Command::new(script)
        .arg("1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let auth = support::bearer(&node.demo_key);
    let body = r#"{"symbol":"BTC-USD","action":"buy","qty":"0.0001"}"#;
    while child.try_wait().unwrap().is_none() {
        node.req("POST", "/v1/signals", &[("Authorization", &auth), support::JSON], body);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let sync = text.lines().find(|l| l.starts_with("fdatasync sleeps")).unwrap_or_else(|| panic!("{text}"));
    let count: u64 = sync.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(count > 0, "{text}");
    assert!(text.contains("longest fdatasync sleeps:") && text.contains("ext4_sync_file"), "{text}");
}
