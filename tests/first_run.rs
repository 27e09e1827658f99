//! The README's first command as a newcomer runs it: `signalgate run` in a fresh, empty working
//! directory, with no configuration file and not one environment variable — so on the default
//! ports (8080–8082), the default topology and the default data directory, which is relative.
//! The `try:` line of its banner (the README's first signal) must place a filled order, and the
//! node started again in the same directory must still have it.
//!
//! This is the only test file that uses the default ports; cargo runs test files one at a time.

mod support;

use std::process::Command;

use support::{bearer, Node};

/// Runs the banner's `try:` command line with a shell, as a newcomer pastes it; the status code
/// and the body.
fn paste(try_line: &str) -> (u16, serde_json::Value) {
    let command = try_line.strip_prefix("try: ").expect("a try: line");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} -w '\\n%{{http_code}}'"))
        .output()
        .expect("sh and curl (scripts/test installs curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("no status from curl: {text:?}"));
    (status.parse().unwrap(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[test]
fn the_first_command_in_an_empty_directory_takes_the_first_signal_and_keeps_it_over_a_restart() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("signalgate-data");
    let node = Node::start_as_newcomer(cwd);
    assert_eq!(node.http.to_string(), "127.0.0.1:8080", "{:?}", node.banner);
    assert!(
        node.banner[0].ends_with(&format!("data dir {})", data.display())),
        "the banner shows the data directory as an absolute path: {:?}",
        node.banner
    );
    let try_line = node.banner.iter().find(|l| l.starts_with("try: ")).expect("a try: line in the banner");
    assert!(try_line.contains(&node.demo_key), "{try_line}");
    let (status, answer) = paste(try_line);
    assert_eq!(status, 201, "{answer}");
    let order = &answer["order"];
    assert_eq!((order["status"].as_str(), order["filled_qty"].as_str()), (Some("filled"), Some("0.0100")), "{answer}");
    let id = order["id"].as_u64().unwrap();
    assert!(data.join("LOCK").exists(), "the journal is in the working directory's signalgate-data");

    let cwd = node.stop();
    let node = Node::start_as_newcomer(cwd);
    let auth = bearer(&node.demo_key);
    let again = node.req("GET", &format!("/v1/orders/{id}"), &[("Authorization", &auth)], "");
    assert_eq!(again.status, 200, "{}", again.body);
    let again = again.json();
    assert_eq!(again["status"], "filled", "{again}");
    assert_eq!(again["avg_price"], order["avg_price"], "{again}");
    let positions = node.req("GET", "/v1/positions", &[("Authorization", &auth)], "").json();
    assert_eq!(positions["positions"][0]["qty"], "0.0100", "{positions}");
}
