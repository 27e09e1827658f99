//! The systemd side of the node: the notify protocol against a socket the test listens on, and
//! the shipped unit files checked by systemd's own tools.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::Node;

#[test]
fn notify_protocol_ready_watchdog_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut node = Node::start(&[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")]);
    let mut messages = Vec::new();
    let mut buf = [0u8; 512];
    let recv = |messages: &mut Vec<String>, buf: &mut [u8]| {
        let n = socket.recv(buf).expect("a notification");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    // READY first, then watchdog pings every 100 ms (half of WATCHDOG_USEC).
    let started = Instant::now();
    while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        recv(&mut messages, &mut buf);
    }
    assert!(messages[0].starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"), "{messages:?}");
    assert!(started.elapsed() >= Duration::from_millis(150), "pings are paced, not a burst");
    node.terminate();
    loop {
        recv(&mut messages, &mut buf);
        if messages.last().unwrap().starts_with("STOPPING=1") {
            break;
        }
    }
    let ready = messages.iter().position(|m| m.starts_with("READY=1")).unwrap();
    let first_ping = messages.iter().position(|m| m == "WATCHDOG=1").unwrap();
    let stopping = messages.iter().position(|m| m.starts_with("STOPPING=1")).unwrap();
    assert!(ready < first_ping && first_ping < stopping, "{messages:?}");
    assert!(node.wait(Duration::from_secs(10)).expect("exits").success());
}

#[test]
fn a_watchdog_without_a_notify_socket_is_harmless() {
    let node = Node::start(&[("WATCHDOG_USEC", "100000")]);
    assert_eq!(node.req("GET", "/health", &[], "").status, 200);
}

/// The shipped units, and the file name each is checked under (the template needs an instance).
const UNITS: [(&str, &str); 4] = [
    ("signalgate.service", "signalgate.service"),
    ("signalgate@.service", "signalgate@test.service"),
    ("signalgate-migrate.service", "signalgate-migrate.service"),
    ("signalgate-migrate@.service", "signalgate-migrate@test.service"),
];

fn unit(name: &str) -> String {
    std::fs::read_to_string(format!("{}/systemd/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The unit with the binary path pointed at the build, written into `dir` as `file_name`.
fn installable(dir: &std::path::Path, name: &str, file_name: &str) -> std::path::PathBuf {
    let text = unit(name).replace("/usr/local/bin/signalgate", support::binary());
    let path = dir.join(file_name);
    std::fs::write(&path, text).unwrap();
    path
}

fn analyze(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze (Debian package systemd) is required; scripts/test installs it");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in UNITS {
        let path = installable(dir.path(), name, file);
        let (ok, out) = analyze(&["verify", path.to_str().unwrap()], dir.path());
        assert!(ok && out.trim().is_empty(), "{name}: {out}");
    }
}

#[test]
fn units_rate_ok_or_better_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in UNITS {
        let path = installable(dir.path(), name, file);
        let (_, out) = analyze(&["security", "--offline=yes", path.to_str().unwrap()], dir.path());
        let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{out}"));
        let mut words = line.rsplit(':').next().unwrap().split_whitespace();
        let score: f64 = words.next().unwrap().parse().unwrap();
        let rating = words.next().unwrap();
        assert!(matches!(rating, "SAFE" | "OK") && score < 5.0, "{name}: {line}");
    }
}

#[test]
fn the_template_is_the_single_unit_with_instance_paths() {
    let single = unit("signalgate.service");
    let template = unit("signalgate@.service");
    let strip = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("%i.toml", "signalgate.toml").replace("@%i", "").replace("/%i", "").replace(" %i", ""))
            .collect()
    };
    assert_eq!(strip(&single), strip(&template));
    assert_eq!(template.matches("%i").count(), 7);
    let (single, template) = (unit("signalgate-migrate.service"), unit("signalgate-migrate@.service"));
    assert_eq!(strip(&single), strip(&template), "the migrate units differ only in their instance paths");
}

/// The groups and names of the unit's `SystemCallFilter=` lines: (allowed, denied).
fn unit_filter(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for line in text.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        match line.strip_prefix('~') {
            Some(rest) => deny.extend(rest.split_whitespace().map(String::from)),
            None => allow.extend(line.split_whitespace().map(String::from)),
        }
    }
    (allow, deny)
}

/// Expands `@group` names to system calls using systemd's own tables.
fn expand(
    names: &[String],
    groups: &std::collections::HashMap<String, Vec<String>>,
) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut todo: Vec<String> = names.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = todo.pop() {
        if n.starts_with('@') {
            if seen.insert(n.clone()) {
                todo.extend(groups.get(&n).cloned().unwrap_or_default());
            }
        } else {
            out.insert(n);
        }
    }
    out
}

#[test]
fn every_system_call_the_node_makes_passes_the_units_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (_, table) = analyze(&["syscall-filter"], dir.path());
    let mut groups = std::collections::HashMap::<String, Vec<String>>::new();
    let mut current = None;
    for line in table.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && t.starts_with('@') {
            current = Some(t.to_string());
            groups.entry(t.to_string()).or_default();
        } else if let Some(g) = &current {
            groups.get_mut(g).unwrap().push(t.to_string());
        }
    }
    let (allow, deny) = unit_filter(&unit("signalgate.service"));
    let (allowed, denied) = (expand(&allow, &groups), expand(&deny, &groups));
    assert!(allowed.contains("io_uring_enter") && allowed.contains("sched_setaffinity"));

    // Run the real node under strace through start-up, traffic, admin calls and a drain.
    let summary = dir.path().join("syscalls.txt");
    let strace = ["strace", "-f", "-c", "-o", summary.to_str().unwrap()];
    let mut node =
        Node::start_wrapped(&strace, &[("SIGNALGATE_TOPOLOGY_PIN", "true"), ("SIGNALGATE_MARKET_INTERVAL_MS", "10")]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let auth = support::bearer(&node.demo_key);
    let mut conn = node.conn();
    for body in
        [r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#, r#"{"symbol":"BTC-USD","action":"close"}"#, "{bad"]
    {
        let sent = conn.try_send("POST", "/v1/signals", &[("Authorization", &auth), support::JSON], body.as_bytes());
        sent.unwrap_or_else(|e| panic!("{body}: {e}; node log: {:?}", node.log()));
    }
    conn.send("GET", "/metrics", &[], b"");
    node.admin("POST", "/admin/accounts", r#"{"name":"s"}"#);
    drop(conn);
    let pid = node.node_pid();
    // strace would detach on SIGTERM rather than pass it on, so signal the node itself.
    // SAFETY: kill(2) on the node process this test started (a child of its strace child).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let exit = node.wait(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "strace and the node exit within 10 s: {exit:?}; node process still there: {}; threads: {:?}; node log: {:?}",
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        std::fs::read_dir(format!("/proc/{pid}/task")).map_or_else(
            |_| Vec::new(),
            |d| d.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).collect()
        ),
        node.log()
    );

    let text = std::fs::read_to_string(&summary).unwrap();
    // Rows of `strace -c` start with the share of time; the header and rulers do not.
    let used: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') && *w != "total")
        .collect();
    assert!(used.contains(&"io_uring_enter") && (used.contains(&"accept") || used.contains(&"accept4")), "{text}");
    // execve is strace starting the node; systemd does that part itself.
    let refused: Vec<&&str> =
        used.iter().filter(|s| **s != "execve" && (!allowed.contains(**s) || denied.contains(**s))).collect();
    assert!(refused.is_empty(), "system calls the unit would refuse: {refused:?}");
}
