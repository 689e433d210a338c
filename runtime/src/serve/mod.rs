//! `runtime serve`: select once, then answer inference requests over local
//! HTTP until stopped, re-selecting on SIGHUP or a power-mode change.
//!
//! HTTP runs on a single-threaded tokio runtime (hyper); decoding and
//! inference run on tokio's blocking pool. The session is single-threaded
//! (`run` takes `&mut self`), so inference is serialised through a mutex:
//! up to `max_in_flight` requests queue for the engine; beyond, and beyond
//! `max_connections`, the server sheds load with 503 ([`Limits`]).

mod api;
mod limits;
mod listener;
mod loopback;
mod metrics;
mod notify;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::select::{Chosen, Reuse};
pub use limits::Limits;
#[doc(hidden)]
pub use loopback::Loopback;
use metrics::Metrics;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `host:port`; the host may be a name (`localhost`).
    Tcp { host: String, port: u16 },
    /// `unix:PATH`: a Unix stream socket (a stale socket file is replaced).
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.is_empty() {
                Err("`unix:` needs a socket path".into())
            } else {
                Ok(Listen::Unix(PathBuf::from(path)))
            };
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is neither host:port nor unix:PATH"))?;
        let port = port
            .parse()
            .map_err(|_| format!("`{port}` in `{s}` is not a port"))?;
        // `[::1]:8470` names an IPv6 host; the brackets are URL syntax only.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Listen::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Listen::Tcp { host, port } => write!(f, "{host}:{port}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How the server bounds requests and watches the device.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub limits: Limits,
    /// The group of a Unix socket (a name or a number); the process's own
    /// group when `None`.
    pub socket_group: Option<String>,
    /// Jetson's nvpmodel status file; a change of its contents re-selects.
    pub power_mode_file: Option<PathBuf>,
    /// How often the power-mode file is read.
    pub power_poll: Duration,
    /// Selects again, afresh, this long after start-up when the start-up
    /// decision was made beside other load ([`Chosen::made_busy`]).
    pub reselect_after_boot: Option<Duration>,
}

/// One selection as the server keeps it: the loaded winner and the report
/// `GET /v1/selection` returns (the caller's `select --json` object).
pub struct Selection {
    pub chosen: Chosen,
    pub report: serde_json::Value,
}

/// The selection requests are served from; swapped whole on re-selection,
/// so a request in flight finishes on the session it started with.
struct Served {
    id: String,
    report: serde_json::Value,
    /// `[batch, 3, H, W]` of the loaded session.
    input_shape: [usize; 4],
    chosen: Mutex<Chosen>,
}

impl Served {
    fn new(selection: Selection) -> Served {
        let Selection { mut chosen, report } = selection;
        Served {
            id: chosen.id.clone(),
            report,
            input_shape: chosen.session().input_shape(),
            chosen: Mutex::new(chosen),
        }
    }
}

/// What every request handler shares.
struct State {
    current: RwLock<Arc<Served>>,
    metrics: Metrics,
    limits: Limits,
    /// One permit per embed request being served (`max_in_flight`).
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl State {
    fn new(selection: Selection, limits: Limits) -> State {
        State {
            current: RwLock::new(Arc::new(Served::new(selection))),
            metrics: Metrics::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.get())),
            limits,
        }
    }

    fn served(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, served: Served) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(served);
        self.metrics.reselected();
    }
}

/// How often the re-selection watcher looks at its SIGHUP flag.
const TICK: Duration = Duration::from_millis(100);

/// Binds `listen`, selects with `select`, tells systemd it is ready, then
/// serves until the process is stopped.
///
/// `select` is called again on SIGHUP and when the power mode changes, and
/// afresh ([`Reuse::Never`]) once after `reselect_after_boot` if the first
/// decision was made busy; a failed re-selection is logged (`log::error!`)
/// and the old one keeps serving.
pub fn serve<F>(listen: &Listen, options: ServeOptions, select: F) -> Result<()>
where
    F: Fn(Reuse) -> Result<Selection> + Send + 'static,
{
    let limits = options.limits;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Each blocking task holds an in-flight permit: no more are needed.
        .max_blocking_threads(limits.max_in_flight.get())
        .build()
        .context("starting the HTTP runtime")?;
    let listener = runtime
        .block_on(listener::Listener::bind(
            listen,
            options.socket_group.as_deref(),
        ))
        .with_context(|| format!("listening on {listen}"))?;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .context("installing the SIGHUP handler")?;
    let power_mode = |file: &Option<PathBuf>| file.as_ref().and_then(|f| std::fs::read(f).ok());
    let mut seen_power_mode = power_mode(&options.power_mode_file);

    let first = select(Reuse::Cached)?;
    let mut quiet_check = options
        .reselect_after_boot
        .filter(|_| first.chosen.made_busy())
        .map(|after| Instant::now() + after);
    log::info!("serving {} on {listen}", first.chosen.id);
    let state = Arc::new(State::new(first, limits));
    notify::ready(&state.served().id);

    let watched = Arc::clone(&state);
    std::thread::Builder::new()
        .name("reselect".into())
        .spawn(move || {
            let mut polled = Instant::now();
            loop {
                std::thread::sleep(TICK);
                let mut why = hup.swap(false, Ordering::SeqCst).then_some("SIGHUP");
                let mut reuse = Reuse::Cached;
                if quiet_check.is_some_and(|at| Instant::now() >= at) {
                    quiet_check = None;
                    (why, reuse) = (Some("a busy start-up"), Reuse::Never);
                }
                if polled.elapsed() >= options.power_poll {
                    polled = Instant::now();
                    let now = power_mode(&options.power_mode_file);
                    if now != seen_power_mode {
                        seen_power_mode = now;
                        why = Some("power mode change");
                    }
                }
                let Some(why) = why else { continue };
                match select(reuse) {
                    Ok(selection) => {
                        let served = Served::new(selection);
                        log::info!("re-selected on {why}: now serving {}", served.id);
                        notify::status(&served.id);
                        watched.replace(served);
                    }
                    Err(e) => log::error!(
                        "re-selection on {why} failed, still serving {}: {e:#}",
                        watched.served().id
                    ),
                }
            }
        })
        .context("starting the re-selection watcher")?;

    runtime.block_on(listener::accept(listener, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_print_back() {
        for s in [
            "127.0.0.1:8470",
            "localhost:0",
            "[::1]:9000",
            "unix:/run/tailor.sock",
        ] {
            assert_eq!(s.parse::<Listen>().unwrap().to_string(), s);
        }
        assert_eq!(
            "[::1]:9000".parse::<Listen>().unwrap(),
            Listen::Tcp {
                host: "::1".into(),
                port: 9000
            }
        );
        for bad in ["8470", "host:http", ":8470", "unix:", "host:70000"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }
}
