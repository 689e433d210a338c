//! `runtime serve` under hostile load, on loopback TCP, bounded in time:
//!
//! - `steady`: 64 clients posting a 256×256 PNG as fast as they are
//!   answered: every answer is 200 or 503 (shed), and p50/p99 latency and
//!   throughput;
//! - `slow`: 500 clients sending one byte a second (half trickle the request
//!   head, half the body after a whole head), reconnecting 1 s after they
//!   are cut off, while `/v1/health` is asked every 200 ms: its worst time;
//! - `garbage`: random bytes posted as PNG, JPEG and raw tensors (bodies up
//!   to the limit, some declared over it, PNG headers declaring 60000²
//!   pixels) by as many clients as `max_in_flight`: every answer a 4xx.
//!
//! Each reports the server's peak RSS (`VmHWM`) and the load average.
//!
//! Usage: `cargo bench -p tailor-runtime --bench serve [-- --secs S --garbage-mb MB]`
//! (`cargo test -p tailor-runtime --bench serve -- ...` runs it on the
//! dev profile, whose dependencies are optimised).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server's bounds as shipped (`serve::Limits::default()`).
const MAX_IN_FLIGHT: usize = 4;
const MAX_BODY: usize = 32 << 20;

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args()
            .skip_while(|a| a != name)
            .nth(1)
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let secs = Duration::from_secs(arg("--secs", 60));
    let garbage_mb = arg("--garbage-mb", 2048);
    let server = Server::start();
    println!("| scenario | load avg (1 min) before → after | requests | answers | latency p50 / p99 / max | throughput | server peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    steady(&server, secs);
    slow(&server, secs);
    garbage(&server, garbage_mb);
}

/// The server, killed on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny");
        let bundle = dir.path().join("bundle");
        common::copy_dir(&fixture, &bundle);
        // A port free a moment ago, released for the server to bind.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_runtime"))
            .arg("serve")
            .arg(&bundle)
            .args(["--latency-ms", "10000", "--memory-mb", "4096"])
            .args(["--min-runs", "2", "--min-time", "0", "--no-cache"])
            .args(["--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while server.get("/v1/health").map(|(code, _)| code) != Some(200) {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn get(&self, path: &str) -> Option<(u16, Duration)> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
        exchange(&self.addr, head.as_bytes(), &[])
    }

    /// The server's peak resident memory so far, in MiB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

/// One request on a fresh connection: its status and time, `None` when the
/// connection failed.
fn exchange(addr: &str, head: &[u8], body: &[u8]) -> Option<(u16, Duration)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    stream.write_all(head).ok()?;
    // A refusal may come before the body is read.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let code = std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()?;
    Some((code, start.elapsed()))
}

fn post_head(content_type: &str, len: usize) -> Vec<u8> {
    format!("POST /v1/embed HTTP/1.1\r\nHost: b\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// What a scenario's clients saw.
#[derive(Default)]
struct Tally {
    /// By status code; 0 for a failed connection.
    codes: BTreeMap<u16, u64>,
    /// Of the answers [`Tally::add`] times.
    latencies: Vec<Duration>,
}

impl Tally {
    /// Counts `answer`, timing it if its code is in `timed`.
    fn add(&mut self, answer: Option<(u16, Duration)>, timed: RangeInclusive<u16>) {
        let (code, time) = answer.unwrap_or((0, Duration::ZERO));
        *self.codes.entry(code).or_default() += 1;
        if code != 0 && timed.contains(&code) {
            self.latencies.push(time);
        }
    }

    fn merge(&mut self, other: Tally) {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.latencies.extend(other.latencies);
    }

    fn row(mut self, name: &str, load: (f64, f64), elapsed: Duration, server: &Server) {
        self.latencies.sort();
        let at = |q: f64| {
            let v = &self.latencies;
            v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        let total: u64 = self.codes.values().sum();
        let answers = self
            .codes
            .iter()
            .map(|(code, n)| match code {
                0 => format!("{n} failed connections"),
                _ => format!("{n} × {code}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {name} | {:.1} → {:.1} | {total} in {:.0} s | {answers} | {:.1} / {:.1} / {:.1} ms | {:.0} answers/s ({:.0} timed/s) | {:.0} MiB |",
            load.0,
            load.1,
            elapsed.as_secs_f64(),
            at(0.5),
            at(0.99),
            at(1.0),
            total as f64 / elapsed.as_secs_f64(),
            self.latencies.len() as f64 / elapsed.as_secs_f64(),
            server.peak_rss_mb()
        );
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs `client` on `n` threads until `secs` have passed, and tallies.
fn clients(n: usize, secs: Duration, client: impl Fn(usize, &mut Tally, Instant) + Sync) -> Tally {
    let end = Instant::now() + secs;
    let total = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for i in 0..n {
            let (client, total) = (&client, &total);
            scope.spawn(move || {
                let mut tally = Tally::default();
                client(i, &mut tally, end);
                total.lock().unwrap().merge(tally);
            });
        }
    });
    total.into_inner().unwrap()
}

fn steady(server: &Server, secs: Duration) {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, 256, 256);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let pixels: Vec<u8> = (0..256 * 256 * 3).map(|i| (i % 251) as u8).collect();
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
    let head = post_head("image/png", png.len());
    let (load, start) = (load_average(), Instant::now());
    let tally = clients(64, secs, |_, tally, end| {
        while Instant::now() < end {
            tally.add(exchange(&server.addr, &head, &png), 200..=200);
        }
    });
    tally.row(
        "steady: 64 clients, PNG 256²",
        (load, load_average()),
        start.elapsed(),
        server,
    );
}

fn slow(server: &Server, secs: Duration) {
    const CLIENTS: usize = 500;
    let request = [
        post_head("application/octet-stream", 1 << 20),
        vec![0; 1 << 20],
    ]
    .concat();
    let head_len = post_head("application/octet-stream", 1 << 20).len();
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(Mutex::new(0u64));
    let (load, start) = (load_average(), Instant::now());
    let trickler = {
        let (stop, cut_off, addr) = (Arc::clone(&stop), Arc::clone(&cut_off), server.addr.clone());
        std::thread::spawn(move || {
            // Per client: its connection, how much of the request it sent,
            // and when it may reconnect.
            let mut conns: Vec<(Option<TcpStream>, usize, Instant)> =
                (0..CLIENTS).map(|_| (None, 0, Instant::now())).collect();
            while !stop.load(Ordering::Relaxed) {
                let tick = Instant::now();
                for (i, (conn, sent, retry)) in conns.iter_mut().enumerate() {
                    if conn.is_none() && Instant::now() >= *retry {
                        // Odd clients send the head at once and trickle the body.
                        *sent = if i % 2 == 1 { head_len } else { 0 };
                        *conn = TcpStream::connect(&addr).ok().and_then(|mut s| {
                            s.write_all(&request[..*sent]).ok()?;
                            Some(s)
                        });
                    }
                    let Some(stream) = conn else { continue };
                    let Some(byte) = request.get(*sent..*sent + 1) else {
                        continue;
                    };
                    if stream.write_all(byte).is_ok() {
                        *sent += 1;
                    } else {
                        *conn = None;
                        *cut_off.lock().unwrap() += 1;
                        *retry = Instant::now() + Duration::from_secs(1);
                    }
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
            }
        })
    };
    let mut health = Tally::default();
    let end = Instant::now() + secs;
    while Instant::now() < end {
        health.add(server.get("/v1/health"), 200..=200);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    trickler.join().unwrap();
    let cut = *cut_off.lock().unwrap();
    health.row(
        &format!(
            "slow: 500 clients at 1 byte/s ({cut} cut off, reconnected); `/v1/health` every 200 ms"
        ),
        (load, load_average()),
        start.elapsed(),
        server,
    );
}

fn garbage(server: &Server, megabytes: u64) {
    // xorshift: reproducible noise without a dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let noise: Vec<u8> = (0..MAX_BODY / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    let mut bomb = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bomb, 60_000, 60_000);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_chunk(png::chunk::IDAT, &noise[..1 << 20])
            .unwrap();
    }
    let budget = megabytes << 20;
    let sent = Mutex::new(0u64);
    let (load, start) = (load_average(), Instant::now());
    let tally = clients(MAX_IN_FLIGHT, Duration::from_secs(3600), |i, tally, _| {
        let mut n = i as u64;
        loop {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let kind =
                ["image/png", "image/jpeg", "application/octet-stream"][(n >> 33) as usize % 3];
            let len = (n >> 40) as usize % MAX_BODY;
            let offset = (n >> 20) as usize % (MAX_BODY - len + 1);
            let (head, body) = match (n >> 60) % 8 {
                // Declared over the limit: refused before it is read.
                0 => (post_head(kind, MAX_BODY + 1), &[][..]),
                // A PNG declaring 60000² pixels, over max_pixels.
                1 => (post_head("image/png", bomb.len()), &bomb[..]),
                _ => (post_head(kind, len), &noise[offset..offset + len]),
            };
            {
                let mut sent = sent.lock().unwrap();
                if *sent >= budget {
                    return;
                }
                *sent += (head.len() + body.len()) as u64;
            }
            tally.add(exchange(&server.addr, &head, body), 400..=499);
        }
    });
    let sent = *sent.lock().unwrap();
    tally.row(
        &format!(
            "garbage: {:.1} GiB of bodies from {MAX_IN_FLIGHT} clients; latency of the 4xx",
            sent as f64 / (1u64 << 30) as f64
        ),
        (load, load_average()),
        start.elapsed(),
        server,
    );
}
