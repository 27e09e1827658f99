//! Configuration text: TOML parsing with the environment's overrides, then validation, which
//! must name every problem rather than panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line, when it looks like NAME=VALUE, is an environment override.
    let (first, rest) = text.split_once('\n').unwrap_or(("", text));
    let env: Vec<(String, String)> =
        first.split_once('=').map(|(k, v)| (format!("SIGNALGATE_{k}"), v.to_string())).into_iter().collect();
    if let Ok(cfg) = Config::from_toml(rest, env) {
        for problem in cfg.validate(&[0, 1]) {
            assert!(!problem.key.is_empty() && !problem.message.is_empty());
        }
    }
});
