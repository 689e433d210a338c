//! What a client sends on one connection to `runtime serve` (requests,
//! pipelined or cut short), answered in-process by the server's connection
//! handling, router and limits around the tiny fixture bundle's selection.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tailor_runtime::engine::EngineKind;
use tailor_runtime::select::{EngineChoice, Limits as SelectLimits, Runtime, RuntimeOptions};
use tailor_runtime::serve::{Limits, Loopback, Selection};

fn server() -> &'static Loopback {
    static SERVER: OnceLock<Loopback> = OnceLock::new();
    SERVER.get_or_init(|| {
        let bundle = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../runtime/tests/fixtures/bundle-tiny"
        );
        let options = RuntimeOptions {
            engine: EngineChoice::Only(EngineKind::Tract),
            cache: None,
            ..RuntimeOptions::default()
        };
        let chosen = Runtime::with_options(bundle, options)
            .and_then(|rt| rt.select(&SelectLimits::latency_ms(1e5)))
            .expect("selecting from the fixture bundle");
        let report = serde_json::json!({ "subnet": chosen.id });
        Loopback::new(Selection { chosen, report }, Limits::default()).expect("the loopback server")
    })
}

fuzz_target!(
    init: {
        tailor_fuzz::let_upstream_debug_checks_unwind();
        server();
    },
    |data: &[u8]| {
        let answer = server().exchange(data).expect("a loopback exchange");
        // Answers are HTTP, or nothing when the connection is dropped; an
        // HTTP/1.0 request is answered in HTTP/1.0.
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
);
