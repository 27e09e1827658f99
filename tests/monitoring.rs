//! Monitoring files: the alert rules pass promtool (syntax and unit tests), and every metric they
//! or the Grafana dashboard name is exported by a real node.

mod support;

use std::process::Command;

use support::{bearer, Node, JSON};

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/prometheus"))
        .output()
        .expect("promtool (Debian package prometheus) is required; scripts/test installs it");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "signalgate-alerts.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "signalgate-alerts.test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Every `signalgate_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("signalgate_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if end > start + "signalgate_".len() {
            names.push(text[start..end].to_string());
        }
        i = end;
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_in_alerts_and_dashboard_is_exported() {
    // With PostgreSQL configured (here unreachable), so that the offload series exist too.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let node = Node::start(&[("SIGNALGATE_POSTGRES_URL", &format!("host=127.0.0.1 port={port} user=postgres"))]);
    node.wait_for_quote(&node.demo_key, "BTC-USD");
    // Traffic so that the histograms and counters have series.
    node.req(
        "POST",
        "/v1/signals",
        &[("Authorization", &bearer(&node.demo_key)), JSON],
        r#"{"symbol":"BTC-USD","action":"buy","qty":"0.01"}"#,
    );
    let metrics = node.req("GET", "/metrics", &[], "").body;
    let dashboard: serde_json::Value = serde_json::from_str(&file("tuning/grafana/signalgate-dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
    let mut exprs = String::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let rules = file("tuning/prometheus/signalgate-alerts.yml");
    let names: Vec<String> = metric_names(&rules).into_iter().chain(metric_names(&exprs)).collect();
    assert!(names.len() >= 10, "{names:?}");
    // A FIX venue's metrics exist only on a node that has one: tests/fix.rs checks those.
    for name in names.into_iter().filter(|n| !n.starts_with("signalgate_fix_")) {
        assert!(
            metrics
                .lines()
                .any(|l| !l.starts_with('#')
                    && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))),
            "{name} is not exported by the node"
        );
    }
}
