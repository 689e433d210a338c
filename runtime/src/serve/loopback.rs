//! The server without a socket to bind: what `fuzz/`'s `http` target
//! sends its bytes to.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;

use super::{listener, Limits, Selection, State};

/// `runtime serve`'s connection handling, router and limits around
/// `selection`, one connection at a time over a socket pair.
#[doc(hidden)]
pub struct Loopback {
    runtime: tokio::runtime::Runtime,
    state: Arc<State>,
}

impl Loopback {
    pub fn new(selection: Selection, limits: Limits) -> Result<Loopback> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the HTTP runtime")?;
        let state = Arc::new(State::new(selection, limits));
        Ok(Loopback { runtime, state })
    }

    /// Sends `request` on a new connection, closes its sending side, and
    /// returns all the server answered before it closed the connection.
    pub fn exchange(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let (client, server) = UnixStream::pair()?;
        server.set_nonblocking(true)?;
        let request = request.to_vec();
        let client = std::thread::spawn(move || -> io::Result<Vec<u8>> {
            // The server may answer (and close) before it has read it all.
            let _ = (&client).write_all(&request);
            let _ = client.shutdown(Shutdown::Write);
            let mut answer = Vec::new();
            (&client).read_to_end(&mut answer)?;
            Ok(answer)
        });
        self.runtime.block_on(async {
            let stream = tokio::net::UnixStream::from_std(server)?;
            let open = Arc::new(Semaphore::new(1));
            let permit = Arc::clone(&open)
                .try_acquire_owned()
                .expect("a fresh permit");
            listener::connection(stream, &self.state, (permit, true), true);
            // The connection's task returns its permit when it ends.
            let _ = open.acquire().await;
            io::Result::Ok(())
        })?;
        client.join().expect("the client thread panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineKind;
    use crate::select::{self, EngineChoice, Runtime, RuntimeOptions};

    fn loopback() -> Loopback {
        let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundle-tiny");
        let options = RuntimeOptions {
            engine: EngineChoice::Only(EngineKind::Tract),
            cache: None,
            ..RuntimeOptions::default()
        };
        let chosen = Runtime::with_options(bundle, options)
            .unwrap()
            .select(&select::Limits::latency_ms(1e5))
            .unwrap();
        let report = serde_json::json!({ "subnet": chosen.id });
        Loopback::new(Selection { chosen, report }, Limits::default()).unwrap()
    }

    #[test]
    fn requests_over_the_loopback_get_the_servers_answers() {
        // Bug caught: an entry that answers without the router (the fuzz
        // target then fuzzes nothing), or hangs on a closed connection.
        let server = loopback();
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        let health = text(
            server
                .exchange(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap(),
        );
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains(r#""status":"ok""#), "{health}");
        let missing = text(
            server
                .exchange(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap(),
        );
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let garbage = text(server.exchange(b"\x00\xffnot http\r\n\r\n").unwrap());
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        let truncated = server.exchange(b"POST /v1/embed HTTP/1.1\r\nContent-Length: 9\r\n\r\nab");
        assert!(truncated.is_ok());
    }
}
