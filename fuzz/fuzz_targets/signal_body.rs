//! The JSON signal and order bodies: `OrderFields::parse` (the zero-allocation JSON reader
//! underneath) and `resolve` against the default symbols. Any input gets a value or a 4xx error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalgate::api::body::{BodyKind, OrderFields};
use signalgate::config::Config;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SYMBOLS: signalgate::engine::symbol::SymbolTable = signalgate::node::symbol_table(&Config::default());
    }
    for kind in [BodyKind::Signal, BodyKind::Order] {
        match OrderFields::parse(data, kind) {
            Ok(fields) => SYMBOLS.with(|s| {
                if let Err(e) = fields.resolve(kind, s) {
                    assert!((400..500).contains(&e.status), "{e:?}");
                }
            }),
            Err(e) => assert!((400..500).contains(&e.status), "{e:?}"),
        }
    }
});
