//! `signalgate-bench` against a real node: short runs that check the JSON report's shape, the
//! achieved rate, and that refused requests are counted by kind and fail the run.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{Node, ADMIN_TOKEN};

fn bench(node: &Node, args: &[&str]) -> (i32, Value, String) {
    scenario(node, "signals", args)
}

/// Harness runs take turns: a spinning harness takes a whole core, and on two cores two of them
/// beside their nodes starve each other below the rates the tests check.
static ONE_HARNESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn harness_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_HARNESS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn an_open_loop_run_reports_latency_rate_and_the_nodes_own_figures() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let (code, r, text) =
        bench(&node, &["--rate", "400", "--connections", "4", "--duration", "2", "--warmup", "0.5", "--accounts", "2"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["scenario"], "signals");
    assert_eq!(r["parameters"]["mode"], "open");
    assert_eq!(r["parameters"]["rate"], json!(400.0));
    assert_eq!(r["parameters"]["accounts"], 2);
    let requests = r["requests"].as_u64().unwrap();
    assert!((600..=1000).contains(&requests), "about 400/s for 2 s: {requests}");
    assert_eq!(r["ok"].as_u64(), Some(requests), "{text}");
    let rate = r["achieved_rps"].as_f64().unwrap();
    assert!((300.0..=500.0).contains(&rate), "{rate}");
    for p in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(r["latency_us"][p].as_u64().unwrap() > 0, "{p}");
    }
    assert!(r["latency_us"]["p50"].as_u64() <= r["latency_us"]["p99"].as_u64());
    assert_eq!(r["errors"]["total"], 0);
    let node_count = r["node_signal_to_order_us"]["count"].as_u64().unwrap();
    assert!(node_count >= requests, "the node saw the signals too: {node_count} < {requests}");
    assert!(r["node_signal_to_order_us"]["0.99"].as_f64().unwrap() > 0.0);
    assert!(text.contains("latency (µs, from each request's intended send time)"), "{text}");
    assert!(text.contains("node signal-to-order"), "{text}");
}

#[test]
fn a_sleeping_harness_keeps_its_rate_and_leaves_its_core_to_others() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    // bash's `times` prints the CPU time of its children: the harness alone.
    let run = format!(
        "'{}' signals --target http://{} --admin http://{} --admin-token {ADMIN_TOKEN} --quiet --json '{}' \
         --rate 400 --connections 4 --duration 2 --warmup 0.5 --accounts 2 --wait sleep; code=$?; times; exit $code",
        env!("CARGO_BIN_EXE_signalgate-bench"),
        node.http,
        node.admin,
        json_path.display()
    );
    let out = {
        let _turn = harness_turn();
        Command::new("bash").args(["-c", &run]).output().unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(r["parameters"]["wait"], "sleep");
    let rate = r["achieved_rps"].as_f64().unwrap();
    assert!((300.0..=500.0).contains(&rate), "{rate}");
    assert_eq!(r["errors"]["total"], 0);
    // The children's line of `times`: "0m0.123s 0m0.045s" (user, system).
    let children = text.lines().last().unwrap();
    let cpu: f64 = children
        .split_whitespace()
        .map(|t| {
            let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
            m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
        })
        .sum();
    // A spinning generator would take its core for the whole 2.5 s.
    assert!(cpu < 1.0, "the harness used {cpu:.2} s of CPU in a 2.5 s run: {children}");
}

#[test]
fn refused_requests_are_counted_by_kind_and_fail_the_run() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let (_, key) = node.account("enterprise", "1000000", json!({"requests_per_minute": 100, "max_daily_loss": "0"}));
    let args = [
        "--key",
        &key,
        "--rate",
        "300",
        "--connections",
        "2",
        "--duration",
        "1.5",
        "--warmup",
        "0",
        "--symbols",
        "BTC-USD",
    ];
    let (code, r, text) = bench(&node, &args);
    assert_eq!(code, 1, "an error rate above --max-error-rate fails the run: {text}");
    let limited = r["errors"]["by_kind"]["http 429 rate.limited"].as_u64().unwrap_or(0);
    assert!(limited > 100, "{}", r["errors"]);
    assert_eq!(r["errors"]["total"].as_u64().unwrap(), limited, "{}; node log: {:?}", r["errors"], node.log());
    // 100 a minute, sliding: a run that straddles a minute boundary may get a few more as the
    // previous minute's share decays (1.5 s of 60 s: under 3).
    assert!(r["ok"].as_u64().unwrap() <= 103, "{}", r["ok"]);
    assert!(text.contains("http 429 rate.limited"), "{text}");
    let (code, _, text) = bench(&node, &[&args[..], &["--max-error-rate", "1"]].concat());
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_closed_loop_run_and_setup_errors() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "ETH-USD");
    let (code, r, text) =
        bench(&node, &["--connections", "2", "--duration", "1", "--warmup", "0.2", "--accounts", "1"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["parameters"]["mode"], "closed");
    assert!(r["requests"].as_u64().unwrap() > 50, "{text}");
    // Nothing listens on port 1: every attempt is a counted connect error, retried after 50 ms.
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("refused.json");
    let out = {
        let _turn = harness_turn();
        Command::new(env!("CARGO_BIN_EXE_signalgate-bench"))
            .args(["signals", "--target", "http://127.0.0.1:1", "--key", "sg_unused", "--connections", "2"])
            .args(["--duration", "1", "--warmup", "0", "--quiet", "--json", json_path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    let refused: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let connects = refused["errors"]["by_kind"]["connect"].as_u64().unwrap();
    assert!((10..=60).contains(&connects), "2 connections backing off 50 ms for 1 s: {connects}");
    let out = Command::new(env!("CARGO_BIN_EXE_signalgate-bench"))
        .args(["signals", "--target", "https://example.invalid", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}

#[test]
fn a_ws_fanout_run_counts_every_quote_to_every_subscriber() {
    // Without the simulator, only the harness's own quotes reach the subscribers.
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    for format in ["binary", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let json_path = dir.path().join("out.json");
        let turn = harness_turn();
        let out = Command::new(env!("CARGO_BIN_EXE_signalgate-bench"))
            .arg("ws-fanout")
            .args(["--target", &format!("http://{}", node.http), "--admin", &format!("http://{}", node.admin)])
            .args(["--ws", &node.ws.to_string(), "--admin-token", ADMIN_TOKEN, "--format", format])
            .args(["--clients", "20", "--per-client", "1", "--rate", "40", "--duration", "1", "--warmup", "0.5"])
            .args(["--memory-base", "10", "--node-pid", &node.node_pid().to_string()])
            .args(["--json", json_path.to_str().unwrap()])
            .output()
            .unwrap();
        drop(turn);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{text}");
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(r["scenario"], "ws-fanout");
        assert_eq!(r["parameters"]["clients"], 20);
        assert_eq!(r["parameters"]["format"], format);
        // 40 quotes in the measured second, alternating over the two symbols, 10 subscribers each.
        let sent = r["quotes_sent"].as_u64().unwrap();
        assert!((38..=41).contains(&sent), "{r}");
        assert_eq!(r["messages_expected"].as_u64(), Some(sent * 10), "{r}");
        assert_eq!(r["messages_delivered"], r["messages_expected"], "{r}");
        assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0);
        // Sampled with 10 and with 20 subscribers.
        assert_eq!(r["parameters"]["memory_base"], 10);
        assert!(r["rss_anon_per_connection_bytes"].as_f64().is_some(), "{r}");
        assert_eq!(r["disconnects"], 0);
        assert!(text.contains("account messages"), "a live progress line: {text}");
    }
}

/// `signalgate-bench SCENARIO` against `node` with a JSON report; (exit code, report, output).
fn scenario(node: &Node, name: &str, args: &[&str]) -> (i32, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("out.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signalgate-bench"));
    cmd.arg(name)
        .args(["--target", &format!("http://{}", node.http), "--admin", &format!("http://{}", node.admin)])
        .args(["--admin-token", ADMIN_TOKEN, "--quiet", "--json", json_path.to_str().unwrap()]);
    if !matches!(name, "signals" | "ceiling") {
        cmd.args(["--ws", &node.ws.to_string()]);
    }
    let out = {
        let _turn = harness_turn();
        cmd.args(args).output().unwrap()
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(&json_path).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, text)
}

#[test]
fn a_ceiling_run_puts_the_node_beside_nginx_and_leaves_no_nginx_behind() {
    let node = Node::start(&[]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    let pid = node.node_pid().to_string();
    let args = [
        "--rounds",
        "2",
        "--connections",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--accounts",
        "2",
        "--node-pid",
        &pid,
    ];
    let (code, r, text) = scenario(&node, "ceiling", &args);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["scenario"], "ceiling");
    let rounds = r["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{r}");
    let mut ratios = Vec::new();
    for round in rounds {
        let (nginx, ours) = (round["nginx_rps"].as_f64().unwrap(), round["signalgate_rps"].as_f64().unwrap());
        assert!(nginx > 100.0 && ours > 100.0, "both served the load: {round}");
        let ratio = round["ratio"].as_f64().unwrap();
        assert!((ratio - ours / nginx).abs() < 1e-9, "{round}");
        assert_eq!(round["signalgate_errors"], json!({}), "no request failed: {round}");
        // Where each server's core went per request, from /proc: the core's time and the threads'.
        let cpu = &round["cpu_per_request_us"];
        for (server, thread) in [("nginx", "nginx"), ("signalgate", "sg-hot")] {
            let core = &cpu[server]["core"];
            for part in ["user", "system", "interrupts"] {
                assert!(core[part].as_f64().is_some(), "{server}'s core {part}: {cpu}");
            }
            assert!(core["busy"].as_f64().unwrap() > 0.0, "{server}: {cpu}");
            let t = &cpu[server]["threads"][thread];
            assert!(t["user"].as_f64().unwrap() + t["system"].as_f64().unwrap() > 0.0, "{server}'s {thread}: {cpu}");
        }
        ratios.push(ratio);
    }
    assert!((r["median_ratio"].as_f64().unwrap() - (ratios[0] + ratios[1]) / 2.0).abs() < 1e-9, "{r}");
    assert!(text.contains("| **median** |"), "{text}");
    assert!(text.contains("CPU of core 0 per request"), "{text}");
    // nginx went down with its worker: nothing answers on its port once the run is over.
    let nginx: std::net::SocketAddr = r["parameters"]["nginx"].as_str().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(nginx).is_err(), "an nginx worker outlived the run on {nginx}");
}

#[test]
fn a_mixed_run_reports_traders_and_watchers() {
    // Without the simulator the harness's quotes are the only ones: the counts are exact.
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let args = ["--rate", "200", "--connections", "2", "--duration", "2", "--warmup", "0.5", "--accounts", "2"];
    let (code, r, text) = scenario(&node, "mixed", &[&args[..], &["--watchers", "10", "--quote-rate", "40"]].concat());
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["scenario"], "mixed");
    assert_eq!(r["parameters"]["watchers"], 10);
    let s = &r["signals"];
    let requests = s["requests"].as_u64().unwrap();
    assert!((300..=500).contains(&requests), "about 200/s for 2 s: {requests}");
    assert_eq!(s["ok"].as_u64(), Some(requests), "{text}");
    assert!(s["latency_us"]["p99"].as_u64().unwrap() > 0);
    let w = &r["watchers"];
    // 40 quotes a second in turn over two symbols; each symbol has 5 of the 10 watchers.
    let sent = w["quotes"]["sent"].as_u64().unwrap();
    assert!((76..=81).contains(&sent), "{w}");
    assert_eq!(w["quotes"]["expected"].as_u64(), Some(sent * 5), "{w}");
    // A quote that a newer one of its symbol replaces before the fan-out sends it is conflated by
    // design; that happens when the fan-out thread is held up for longer than the 50 ms between
    // a symbol's quotes (seen with the whole suite running on two cores). The report must count it.
    let (delivered, expected) = (w["quotes"]["delivered"].as_u64().unwrap(), sent * 5);
    assert!(delivered <= expected && delivered >= expected * 9 / 10, "{w}");
    let conflated = w["quotes_conflated"].as_f64().unwrap();
    assert!((conflated - (1.0 - delivered as f64 / expected as f64)).abs() < 1e-9, "{w}");
    // Every signal makes an order that fills: at least the order and its fill reach each of the
    // account's 5 watchers.
    let account = w["account"]["expected"].as_u64().unwrap();
    assert!(account >= requests * 2 * 5 * 9 / 10, "{account} for {requests} signals: {w}");
    assert_eq!(w["account"]["delivered"], w["account"]["expected"], "{w}");
    assert!(w["account"]["latency_us"]["p50"].as_u64().unwrap() > 0, "{w}");
    assert_eq!(w["account_loss"].as_f64(), Some(0.0), "{w}");
    assert_eq!(w["disconnects"], 0);
    assert_eq!(r["failed"], json!([]));
    assert!(r["node_signal_to_order_us"]["count"].as_u64().unwrap() >= requests);
    assert!(
        text.contains("traders (POST /v1/signals)") && text.contains("| account, from the node's event time |"),
        "{text}"
    );

    // A key the node does not know: the run cannot start, and says why.
    let (code, _, text) = scenario(&node, "mixed", &["--key", "sg_unknown", "--duration", "1"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("auth.invalid_key"), "{text}");
}

#[test]
fn a_soak_samples_the_node_and_fails_when_it_dies() {
    let node = Node::start(&[("SIGNALGATE_MARKET_SIMULATOR", "false")]);
    let pid = node.node_pid().to_string();
    let args = ["--rate", "100", "--connections", "2", "--accounts", "1", "--watchers", "4", "--quote-rate", "20"];
    let (code, r, text) = scenario(
        &node,
        "soak",
        &[&args[..], &["--duration", "2", "--warmup", "0.5", "--sample-every", "0.5", "--node-pid", &pid]].concat(),
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["scenario"], "soak");
    let p = &r["node_process"];
    let samples = p["samples"].as_array().unwrap();
    assert!((4..=6).contains(&samples.len()), "every 0.5 s over 2.5 s: {p}");
    assert!(samples.iter().all(|s| s["rss_bytes"].as_u64().unwrap() > 1 << 20 && s["open_fds"].as_u64().unwrap() > 4));
    let fds = &p["drift_after_warmup"]["open_fds"];
    assert!(fds["max"].as_f64().unwrap() >= samples.last().unwrap()["open_fds"].as_f64().unwrap(), "{p}");
    assert!(p["drift_after_warmup"]["rss_bytes"]["per_hour"].is_number(), "{p}");
    assert_eq!(p["alive"], true);
    assert!(text.contains("open descriptors"), "{text}");

    // The node dies half-way: the soak fails and says so.
    let turn = harness_turn();
    let run = std::thread::spawn({
        let node_args: Vec<String> = [&args[..], &["--duration", "4", "--warmup", "0", "--node-pid", &pid]]
            .concat()
            .into_iter()
            .map(String::from)
            .collect();
        let (http, admin, ws) = (node.http, node.admin, node.ws);
        move || {
            Command::new(env!("CARGO_BIN_EXE_signalgate-bench"))
                .args(["soak", "--target", &format!("http://{http}"), "--admin", &format!("http://{admin}")])
                .args(["--ws", &ws.to_string(), "--admin-token", ADMIN_TOKEN, "--quiet", "--sample-every", "0.5"])
                .args(&node_args)
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = node.crash();
    let out = run.join().unwrap();
    drop(turn);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the node exited during the soak"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_signalgate-bench"))
        .args(["soak", "--node-pid", "4000000000", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process 4000000000"));
}
