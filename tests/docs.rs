//! The documentation is executed. README.md's walk-through, then the examples of docs/api.md and
//! docs/ws.md, run in that order against one node started as the README says (`signalgate run`
//! with no configuration and no environment, in a fresh directory, so on the default ports), and
//! every answer is compared with the one the page shows.
//!
//! The pages are run by byexample (PyPI; `scripts/test` installs it into `target/doc-tools`): a
//! line `$ command` in a fenced block is run in one bash session per page, and the lines under it
//! up to a blank line are the expected output, where `<...>` matches anything (prices, times,
//! keys; a named tag such as `<key>` is plain text). Whitespace is compared loosely (`+norm-ws`: curl's header lines end in CRLF, and the blank
//! line between headers and body cannot be written in a block). A command that must not run here
//! carries `# byexample: +skip`; [`SKIPPED`] lists every one of them, so the list stays short and
//! a new one is a decision, not an accident.
//!
//! The node's working directory holds links to the checkout's files (so `examples/ws_client.py`
//! and `signalgate.example.toml` are where a reader in the checkout finds them) and its own
//! `signalgate-data`; the pages run there, with the node's key and admin token in `KEY` and
//! `ADMIN_TOKEN` (the banner shows them; a reader exports them by hand) and the binary on `PATH`.
//! This file and tests/first_run.rs use the default ports; cargo runs test files one at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Node;

/// The executed pages, in the order they run.
const PAGES: &[&str] = &["README.md", "docs/api.md", "docs/ws.md"];

/// The commands of those pages that are not run, each with why: (page, the command's start).
const SKIPPED: &[(&str, &str)] = &[
    ("README.md", "$ cargo run --release -- run"), // this test starts the node itself
    ("README.md", "$ scripts/test"),               // the suite this test is part of
    ("README.md", "$ export KEY=sg_4e46…"),        // placeholders; the test exports the real ones
    ("README.md", "$ SIGNALGATE_HTTP_ADDR=0.0.0.0:8080"), // a second node on the same ports
];

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// byexample: `$BYEXAMPLE`, or where scripts/test installs it.
fn byexample() -> PathBuf {
    let path = std::env::var_os("BYEXAMPLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| checkout().join("target/doc-tools/bin/byexample"));
    assert!(path.exists(), "{} is missing: scripts/test installs byexample (pip, PyPI)", path.display());
    path
}

/// The fenced blocks of `text`: (line of the opening fence, info string, lines).
fn fenced_blocks(text: &str) -> Vec<(usize, &str, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, &str, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(info), None) => open = Some((i + 1, info.trim(), Vec::new())),
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some(mut block)) => {
                block.2.push(line);
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn every_shell_block_of_the_executed_pages_runs_or_says_why_not() {
    let mut skipped = Vec::new();
    for page in PAGES {
        let text = std::fs::read_to_string(checkout().join(page)).unwrap();
        for (line, info, lines) in fenced_blocks(&text) {
            if !matches!(info, "sh" | "shell" | "bash" | "console") {
                continue;
            }
            let commands: Vec<&&str> = lines.iter().filter(|l| l.starts_with("$ ")).collect();
            assert!(!commands.is_empty(), "{page}:{line}: a shell block without `$ ` commands would never be run");
            for c in commands.into_iter().filter(|c| c.contains("# byexample: +skip")) {
                skipped.push((*page, c.split("  ").next().unwrap().trim_end().to_string()));
            }
        }
    }
    let listed: Vec<(&str, String)> =
        SKIPPED.iter().map(|(p, c)| (*p, c.to_string())).filter(|(p, _)| PAGES.contains(p)).collect();
    for s in &skipped {
        assert!(
            listed.iter().any(|(p, c)| p == &s.0 && s.1.starts_with(c.as_str())),
            "{}: `{}` is skipped but not in SKIPPED",
            s.0,
            s.1
        );
    }
    assert_eq!(skipped.len(), SKIPPED.len(), "SKIPPED lists a command that is no longer skipped: {skipped:?}");
}

#[test]
fn the_readme_walk_through_and_the_api_and_ws_examples_give_the_answers_they_show() {
    let byexample = byexample();
    let cwd = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(checkout()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if [".git", "target", "signalgate-data"].iter().any(|n| name == *n) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), cwd.path().join(&name)).unwrap();
    }
    let node = Node::start_as_newcomer(cwd);
    let cwd = node.data_dir().parent().unwrap().to_path_buf();
    let bin_dir = Path::new(support::binary()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(&byexample)
        .args(["-l", "shell", "--timeout", "30", "-o", "+norm-ws -capture", "--pretty", "none", "--no-progress-bar"])
        .args(PAGES.iter().map(|p| checkout().join(p)))
        .current_dir(&cwd)
        .env("KEY", &node.demo_key)
        .env("ADMIN_TOKEN", &node.admin_token)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", byexample.display()));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the documentation's answers changed:\n{report}");
    for page in PAGES {
        assert!(report.contains(&format!("File {}", checkout().join(page).display())), "{page} did not run:\n{report}");
    }
}
