//! `runtime serve` end to end: the real binary on the committed tiny bundle,
//! driven by a hand-written HTTP/1.1 client over a Unix socket and by curl
//! over loopback TCP. Outputs are checked against the library's own session
//! run in this process on the same tensor; for images, on the tensor Pillow
//! makes of them (tests/photos).
#![cfg(feature = "serve")]

mod common;
mod photos;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::Array4;
use serde_json::Value;
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::{self, EngineKind, EngineOptions, Outputs};

const TOLERANCE: f32 = 1e-5;
/// Start-up selects (measures candidates) before it serves.
const STARTUP: Duration = Duration::from_secs(180);
const PNG_JPEG_COLOUR: [u8; 3] = [200, 40, 90];

/// A running server, killed when the test ends however it ends.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `runtime serve` on a copy of the tiny bundle, listening on a
    /// Unix socket unless `args` says otherwise, without waiting for it.
    fn spawn(args: &[&str], env: &[(&str, &OsStr)]) -> Server {
        Server::spawn_logging(args, env, false)
    }

    /// As [`Server::spawn`]; with `journal`, `$JOURNAL_STREAM` names the
    /// log file as systemd names the journal's stream to a service.
    fn spawn_logging(args: &[&str], env: &[(&str, &OsStr)], journal: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(&fixture_bundle(), &dir.path().join("bundle"));
        let socket = dir.path().join("sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runtime"));
        cmd.arg("serve")
            .arg(dir.path().join("bundle"))
            .args(["--latency-ms", "10000", "--memory-mb", "4096"])
            .args(["--min-runs", "2", "--min-time", "0"]);
        if !args.contains(&"--listen") {
            cmd.arg("--listen")
                .arg(format!("unix:{}", socket.display()));
        }
        if !args.contains(&"--cache") {
            cmd.arg("--no-cache");
        }
        let log = File::create(dir.path().join("log")).unwrap();
        if journal {
            cmd.env("JOURNAL_STREAM", stream_id(&log));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Server { child, dir, socket }
    }

    /// Spawns and waits until `/v1/health` answers.
    fn start(args: &[&str]) -> Server {
        let server = Server::spawn(args, &[]);
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok((200, _)) = try_request(&self.socket, "GET", "/v1/health", &[], b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server not healthy in time; log:\n{}", self.log());
    }

    /// Sends SIGHUP, as `systemctl reload` does.
    fn hup(&self) {
        let kill = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits until the log holds `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + STARTUP;
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no `{text}` in\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let (code, text) = try_request(&self.socket, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} answered {code} `{text}`: {e}"));
        (code, json)
    }

    fn embed(&self, content_type: &str, query: &str, body: &[u8]) -> (u16, Value) {
        self.request(
            "POST",
            &format!("/v1/embed{query}"),
            &[("Content-Type", content_type)],
            body,
        )
    }

    fn metrics(&self) -> String {
        try_request(&self.socket, "GET", "/metrics", &[], b"")
            .unwrap()
            .1
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
}

/// `DEV:INODE` of an open file, as systemd writes `$JOURNAL_STREAM`.
fn stream_id(file: &File) -> String {
    let meta = file.metadata().unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

fn fixture_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny")
}

/// One HTTP/1.1 exchange on a fresh connection: status and body.
fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    exchange(&mut stream, method, path, headers, body)
}

fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: tailor\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    // A refusal may come (and the server stop reading) before the body is
    // sent, as real clients allow for: the answer is still there to read.
    let _ = stream.write_all(body);
    read_response(stream)
}

fn read_response(stream: &mut impl Read) -> std::io::Result<(u16, String)> {
    let (code, _, body) = read_response_head(stream)?;
    Ok((code, body))
}

/// Status, head and body of the one response `stream` holds.
fn read_response_head(stream: &mut impl Read) -> std::io::Result<(u16, String, String)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in `{text}`")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in `{head}`")))?;
    Ok((code, head.to_owned(), body.to_owned()))
}

fn png(colour: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..w * h).flat_map(|_| colour).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// The library's own answer for `pixels` on sub-network `id` of `bundle`.
fn run_in_process(bundle: &Path, id: &str, pixels: &Array4<f32>) -> Outputs {
    let bundle = Bundle::open(bundle).unwrap();
    let subnet = bundle.subnet(id).unwrap();
    let mut session = engine::load(
        EngineKind::Tract,
        &bundle.graph_path(&subnet),
        &EngineOptions::default(),
    )
    .unwrap();
    session.run(pixels.view()).unwrap()
}

fn side(bundle: &Path) -> usize {
    Bundle::open(bundle)
        .unwrap()
        .manifest()
        .teacher
        .config
        .image_size() as usize
}

/// A deterministic, non-constant image tensor; `seed` varies it.
fn tensor(side: usize, seed: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, side, side), |(_, c, y, x)| {
        ((c * 31 + y * 7 + x * 3 + seed * 13) % 17) as f32 / 8.0 - 1.0
    })
}

fn le_bytes(t: &Array4<f32>) -> Vec<u8> {
    t.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tolerance, "{what}[{i}]: {g} vs {w}");
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The value of one exposition line, e.g. `tailor_reselections_total`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn embeds_png_jpeg_and_raw_tensors_as_the_library_does() {
    let server = Server::start(&[]);
    let side = side(&server.bundle());

    // A raw tensor: exactly the library's output for the same input.
    let input = tensor(side, 1);
    let (code, raw) = server.embed("application/octet-stream", "", &le_bytes(&input));
    assert_eq!(code, 200, "{raw}");
    let id = raw["subnet"].as_str().unwrap().to_owned();
    let want = run_in_process(&server.bundle(), &id, &input);
    assert_close(
        &floats(&raw["cls_token"]),
        want.cls_token.row(0).as_slice().unwrap(),
        TOLERANCE,
        "cls_token",
    );
    assert!(
        raw.get("patch_tokens").is_none(),
        "patch tokens only on request"
    );
    assert!(raw["latency_ms"].as_f64().unwrap() > 0.0);

    // patch_tokens on request, with a matching X-Tensor-Shape.
    let shape = format!("1,3,{side},{side}");
    let (code, with_patches) = server.request(
        "POST",
        "/v1/embed?patch_tokens=1",
        &[
            ("Content-Type", "application/octet-stream"),
            ("X-Tensor-Shape", &shape),
        ],
        &le_bytes(&input),
    );
    assert_eq!(code, 200, "{with_patches}");
    let rows = with_patches["patch_tokens"].as_array().unwrap();
    let want_patches = want.patch_tokens.index_axis(ndarray::Axis(0), 0);
    assert_eq!(rows.len(), want_patches.nrows());
    for (row, want_row) in rows.iter().zip(want_patches.rows()) {
        assert_close(
            &floats(row),
            want_row.as_slice().unwrap(),
            TOLERANCE,
            "patch_tokens",
        );
    }

    // PNG photographs: the answer is the graph run on Pillow's tensor for
    // the same file, so decoding and preprocessing meet a golden that is
    // not `runtime::image` (tests/photos). Measured: at most 1.6e-6 apart
    // (outputs up to 2.6); channels swapped or the crop a pixel off move
    // them by 0.2 and more.
    assert_eq!(side, photos::SIDE);
    for name in photos::NAMES {
        let want = run_in_process(&server.bundle(), &id, &photos::expected(name));
        let (code, got) = server.embed("image/png", "", &std::fs::read(photos::png(name)).unwrap());
        assert_eq!(code, 200, "{name}: {got}");
        assert_close(
            &floats(&got["cls_token"]),
            want.cls_token.row(0).as_slice().unwrap(),
            TOLERANCE,
            name,
        );
    }

    // A uniform PNG, the JPEG's partner below.
    let (code, from_png) = server.embed("image/png", "", &png(PNG_JPEG_COLOUR, 40, 24));
    assert_eq!(code, 200, "{from_png}");
    let png_cls = floats(&from_png["cls_token"]);

    // A JPEG of the same colour (tools/make_serve_fixtures.py) lands near
    // the PNG; another colour lands far, so the bound means something.
    let jpeg = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/serve/colour.jpg"),
    )
    .unwrap();
    let (code, from_jpeg) = server.embed("image/jpeg; charset=binary", "", &jpeg);
    assert_eq!(code, 200, "{from_jpeg}");
    let (_, other) = server.embed("image/png", "", &png([20, 200, 90], 8, 8));
    let far = max_diff(&png_cls, &floats(&other["cls_token"]));
    let near = max_diff(&png_cls, &floats(&from_jpeg["cls_token"]));
    assert!(
        near < far / 10.0,
        "JPEG vs PNG of one colour differ by {near}, other colour by {far}"
    );
}

#[test]
fn bad_requests_get_a_4xx_with_a_reason_and_the_server_lives_on() {
    let server = Server::start(&["--max-body-mb", "1"]);
    let side = side(&server.bundle());
    let refused = |code: u16, (got, body): (u16, Value)| {
        assert_eq!(got, code, "{body}");
        assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
    };
    refused(
        400,
        server.embed("image/png", "", b"\x89PNG but not really"),
    );
    refused(400, server.embed("image/jpeg", "", b"\xff\xd8 truncated"));
    refused(415, server.embed("text/plain", "", b"hello"));
    refused(
        415,
        server.request("POST", "/v1/embed", &[], b"no content type"),
    );
    refused(400, server.embed("application/octet-stream", "", &[0; 12]));
    let one = le_bytes(&tensor(side, 0));
    refused(
        400,
        server.request(
            "POST",
            "/v1/embed",
            &[
                ("Content-Type", "application/octet-stream"),
                ("X-Tensor-Shape", "2,3,8,8"),
            ],
            &one,
        ),
    );
    refused(404, server.request("GET", "/v2/nothing", &[], b""));
    refused(405, server.request("GET", "/v1/embed", &[], b""));
    refused(405, server.request("POST", "/v1/health", &[], b""));

    // Over the limit by declaration: refused before the body is sent at all,
    // even when the declared length is absurd.
    for declared in ["1048577", "1000000000000"] {
        refused(
            413,
            server.request(
                "POST",
                "/v1/embed",
                &[("Content-Type", "image/png"), ("Content-Length", declared)],
                b"",
            ),
        );
    }
    // Over the limit in chunks (no declared length): cut off once past it.
    let mut stream = UnixStream::connect(&server.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(b"POST /v1/embed HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..20 {
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break; // the server stopped reading, as it should
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let (code, body) = read_response(&mut stream).unwrap();
    assert_eq!(code, 413, "{body}");

    // Still serving, and every refusal was counted by endpoint and code.
    let (code, _) = server.embed("application/octet-stream", "", &one);
    assert_eq!(code, 200);
    let m = server.metrics();
    let count = |endpoint: &str, code: u16| {
        metric(
            &m,
            &format!("tailor_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("/v1/embed", 400), 4.0, "{m}");
    assert_eq!(count("/v1/embed", 415), 2.0, "{m}");
    assert_eq!(count("/v1/embed", 413), 3.0, "{m}");
    assert_eq!(count("/v1/embed", 405), 1.0, "{m}");
    assert_eq!(count("/v1/health", 405), 1.0, "{m}");
    assert_eq!(count("other", 404), 1.0, "{m}");
    assert_eq!(count("/v1/embed", 200), 1.0, "{m}");
    // Only inferences that ran are timed.
    assert_eq!(
        metric(&m, "tailor_inference_seconds_count"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn concurrent_requests_are_all_answered_correctly() {
    const THREADS: usize = 8;
    const EACH: usize = 5;
    // Within the in-flight bound, concurrent requests queue for the engine;
    // beyond it they are shed (a_full_server_sheds_load_with_503_and_retry_after).
    let (_config, server) = start_with_config(&format!("[serve]\nmax_in_flight = {THREADS}\n"));
    let side = side(&server.bundle());
    let (_, health) = server.request("GET", "/v1/health", &[], b"");
    let id = health["subnet"].as_str().unwrap().to_owned();
    let inputs: Vec<Array4<f32>> = (0..THREADS * EACH).map(|i| tensor(side, i)).collect();
    let wants: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| {
            run_in_process(&server.bundle(), &id, t)
                .cls_token
                .row(0)
                .to_vec()
        })
        .collect();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (server, inputs, wants) = (&server, &inputs, &wants);
            scope.spawn(move || {
                for i in (t * EACH)..((t + 1) * EACH) {
                    let (code, body) =
                        server.embed("application/octet-stream", "", &le_bytes(&inputs[i]));
                    assert_eq!(code, 200, "{body}");
                    assert_close(
                        &floats(&body["cls_token"]),
                        &wants[i],
                        TOLERANCE,
                        &format!("request {i}"),
                    );
                }
            });
        }
    });
    let m = server.metrics();
    let total = (THREADS * EACH) as f64;
    assert_eq!(
        metric(
            &m,
            "tailor_requests_total{endpoint=\"/v1/embed\",code=\"200\"}"
        ),
        Some(total),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tailor_inference_seconds_count"),
        Some(total),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tailor_inference_seconds_bucket{le=\"+Inf\"}"),
        Some(total),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("tailor_selected_subnet{{id=\"{id}\"}}")),
        Some(1.0),
        "{m}"
    );
}

fn wait_for_reselections(server: &Server, n: f64) {
    let deadline = Instant::now() + STARTUP;
    while metric(&server.metrics(), "tailor_reselections_total") != Some(n) {
        assert!(
            Instant::now() < deadline,
            "no re-selection {n}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reselects_and_the_service_keeps_answering() {
    let server = Server::start(&[]);
    assert_eq!(
        metric(&server.metrics(), "tailor_reselections_total"),
        Some(0.0)
    );
    server.hup();
    wait_for_reselections(&server, 1.0);
    let side = side(&server.bundle());
    let (code, body) = server.embed("application/octet-stream", "", &le_bytes(&tensor(side, 3)));
    assert_eq!(code, 200, "{body}");
    assert!(
        server.log().contains("re-selected on SIGHUP"),
        "{}",
        server.log()
    );
}

#[test]
fn sighup_applies_the_config_file_as_edited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runtime.toml");
    std::fs::write(&config, "percentile = 50\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let percentile =
        || server.request("GET", "/v1/selection", &[], b"").1["limits"]["percentile"].clone();
    assert_eq!(percentile(), 50);
    std::fs::write(&config, "percentile = 99\n").unwrap();
    server.hup();
    wait_for_reselections(&server, 1.0);
    assert_eq!(percentile(), 99, "the edit applies on SIGHUP");
    // A file that no longer reads is reported; the old selection serves on.
    std::fs::write(&config, "percentile = \"high\"\n").unwrap();
    server.hup();
    server.wait_for_log("re-selection on SIGHUP failed");
    assert!(server.log().contains("`percentile`"), "{}", server.log());
    assert_eq!(percentile(), 99);
}

/// A server probing the device under `sysroot`, caching decisions there.
fn start_on(sysroot: &Path, args: &[&str]) -> Server {
    let cache = sysroot.join("decisions.postcard");
    let root = ["--sysroot", sysroot.to_str().unwrap()];
    let cache = ["--cache", cache.to_str().unwrap()];
    Server::start(&[&root[..], &cache[..], args].concat())
}

#[test]
fn a_power_mode_change_reselects_and_a_mode_seen_before_is_a_cache_hit() {
    let sysroot = tempfile::tempdir().unwrap();
    let status = sysroot.path().join("var/lib/nvpmodel/status");
    std::fs::create_dir_all(status.parent().unwrap()).unwrap();
    std::fs::write(&status, "pmode:0000 fmode:normal\n").unwrap();
    let server = start_on(sysroot.path(), &["--power-poll", "0.2"]);
    let cache_outcome = || server.request("GET", "/v1/selection", &[], b"").1["cache"].clone();
    assert_eq!(cache_outcome(), "miss");
    // A new mode re-probes the device: the key changes, so no stale hit.
    std::fs::write(&status, "pmode:0001 fmode:normal\n").unwrap();
    wait_for_reselections(&server, 1.0);
    assert_eq!(cache_outcome(), "miss", "mode 1 was never seen");
    // The same mode again (SIGHUP) is taken from the cache.
    server.hup();
    wait_for_reselections(&server, 2.0);
    assert_eq!(cache_outcome(), "hit", "mode 1 was decided before");
    // Back to mode 0: its decision is still in the cache beside mode 1's
    // (a one-decision cache file would have lost it).
    std::fs::write(&status, "pmode:0000 fmode:normal\n").unwrap();
    wait_for_reselections(&server, 3.0);
    assert_eq!(cache_outcome(), "hit", "mode 0 was decided first");
}

#[test]
fn a_busy_start_up_selects_again_afresh_after_the_timer() {
    let sysroot = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sysroot.path().join("proc")).unwrap();
    // A load average of 64: busy for any CPU count this runs on.
    std::fs::write(
        sysroot.path().join("proc/loadavg"),
        "64.00 60.00 50.00 9/500 42\n",
    )
    .unwrap();
    let config = sysroot.path().join("runtime.toml");
    std::fs::write(&config, "reselect_after_boot_s = 0.5\n").unwrap();
    let server = start_on(sysroot.path(), &["--config", config.to_str().unwrap()]);
    wait_for_reselections(&server, 1.0);
    let selection = server.request("GET", "/v1/selection", &[], b"").1;
    // Afresh: the decision cached at start-up is not what serves.
    assert_eq!(selection["cache"], "miss", "{selection}");
    assert_eq!(selection["load"]["load_avg_1m"], 64.0, "{selection}");
    server.wait_for_log("re-selected on a busy start-up");
}

#[test]
fn systemd_hears_ready_only_once_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(STARTUP)).unwrap();
    let server = Server::spawn(&[], &[("NOTIFY_SOCKET", notify.as_os_str())]);
    let mut buf = [0u8; 512];
    let n = listener
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification: {e}; log:\n{}", server.log()));
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    // No waiting: once READY=1 is out, the selection is made and served.
    let (code, health) = server.request("GET", "/v1/health", &[], b"");
    assert_eq!(code, 200);
    let status = format!("STATUS=serving {}", health["subnet"].as_str().unwrap());
    assert!(
        message.lines().any(|l| l == status),
        "{message} vs {health}"
    );
}

#[test]
fn curl_over_loopback_tcp() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::spawn(&["--listen", &addr, "--max-body-mb", "1"], &[]);
    let url = |path: &str| format!("http://{addr}{path}");
    let curl = |args: &[&str]| -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "120", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap_or(0), body.to_owned())
    };
    let deadline = Instant::now() + STARTUP;
    while curl(&[&url("/v1/health")]).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not healthy; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = curl(&[
        "-H",
        "Content-Type: image/png",
        "--data-binary",
        &format!("@{}", photos::png("astronaut").display()),
        &url("/v1/embed?patch_tokens=1"),
    ]);
    assert_eq!(code, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let id = json["subnet"].as_str().unwrap();
    let want = run_in_process(&server.bundle(), id, &photos::expected("astronaut"));
    assert_close(
        &floats(&json["cls_token"]),
        want.cls_token.row(0).as_slice().unwrap(),
        TOLERANCE,
        "cls_token",
    );
    assert_eq!(
        json["patch_tokens"].as_array().unwrap().len(),
        want.patch_tokens.dim().1
    );

    // curl sends `Expect: 100-continue` for a large body; the server
    // answers 413 instead of asking for it.
    let big = server.dir.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 3 << 20]).unwrap();
    let (code, body) = curl(&[
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", big.display()),
        &url("/v1/embed"),
    ]);
    assert_eq!(code, 413, "{body}");

    // The selection is the `select --json` object.
    let (code, body) = curl(&[&url("/v1/selection")]);
    assert_eq!(code, 200);
    let selection: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(selection["subnet"]["id"], id);
    assert!(
        selection["limits"]["latency_ms"].as_f64() == Some(10000.0),
        "{selection}"
    );
}

#[test]
fn log_lines_carry_journald_priorities_only_when_stderr_is_the_journal() {
    // `$JOURNAL_STREAM` naming another file is what a child redirected
    // away from the journal inherits: no priorities there.
    let elsewhere = tempfile::tempfile().unwrap();
    let elsewhere = stream_id(&elsewhere);
    let plain = [("JOURNAL_STREAM", OsStr::new(&elsewhere))];
    for (journal, env, [info, warning, error]) in [
        (true, &[][..], ["<6>", "<4>", "<3>"]),
        (false, &plain[..], ["info: ", "warning: ", "error: "]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("runtime.toml");
        std::fs::write(&config, "percentile = 50\n").unwrap();
        // A NOTIFY_SOCKET with no socket behind it: a warning.
        let nowhere = dir.path().join("no-socket");
        let env = [env, &[("NOTIFY_SOCKET", nowhere.as_os_str())]].concat();
        let server = Server::spawn_logging(&["--config", config.to_str().unwrap()], &env, journal);
        server.wait_healthy();
        // A config that no longer reads fails the re-selection: an error.
        std::fs::write(&config, "percentile = \"high\"\n").unwrap();
        server.hup();
        server.wait_for_log("re-selection on SIGHUP failed");
        let log = server.log();
        let has = |prefix: &str, text: &str| {
            log.lines()
                .any(|l| l.strip_prefix(prefix).is_some_and(|l| l.starts_with(text)))
        };
        let (_, health) = server.request("GET", "/v1/health", &[], b"");
        let serving = format!("serving {} on unix:", health["subnet"].as_str().unwrap());
        assert!(
            has(info, &serving),
            "journal {journal}, no {info}{serving}… in\n{log}"
        );
        assert!(
            has(warning, "cannot notify systemd at "),
            "journal {journal}, no {warning}… in\n{log}"
        );
        assert!(
            has(error, "re-selection on SIGHUP failed, still serving "),
            "journal {journal}, no {error}… in\n{log}"
        );
    }
}

/// A server reading `config` (a runtime.toml); the file's directory lives
/// as long as the server.
fn start_with_config(config: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    (dir, server)
}

/// One request on a fresh connection: status, response head and body.
fn request_head(socket: &Path, request: &str) -> (u16, String, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_response_head(&mut stream).unwrap()
}

/// An embed request head for a raw tensor of `len` bytes.
fn embed_head(len: usize, extra: &str) -> String {
    format!(
        "POST /v1/embed HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n"
    )
}

/// An embed request for the raw tensor `body` on a fresh connection.
fn embed_raw(socket: &Path, body: &[u8]) -> (u16, String, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(embed_head(body.len(), "").as_bytes())
        .unwrap();
    // A refusal may come before the body is read, as in `exchange`.
    let _ = stream.write_all(body);
    read_response_head(&mut stream).unwrap()
}

fn retries_after_a_second(head: &str) -> bool {
    head.lines()
        .any(|l| l.eq_ignore_ascii_case("retry-after: 1"))
}

/// `exchange` repeated while it is shed for connections: a connection the
/// client has closed counts until the server has seen it close.
fn admitted(exchange: impl Fn() -> (u16, String, String)) -> (u16, String, String) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let answer = exchange();
        if !(answer.0 == 503 && answer.2.contains("(max_connections)")) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HEALTH: &str = "GET /v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[test]
fn a_full_server_sheds_load_with_503_and_retry_after() {
    let (_config, server) = start_with_config("[serve]\nmax_connections = 2\nmax_in_flight = 1\n");
    let side = side(&server.bundle());
    let body = le_bytes(&tensor(side, 5));
    let socket = &server.socket;

    // A: an embed request holding the one in-flight slot. The server asks
    // for the body (100 Continue) once it holds the slot.
    let mut held = UnixStream::connect(socket).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    held.write_all(embed_head(body.len(), "Expect: 100-continue\r\n").as_bytes())
        .unwrap();
    let mut continued = [0u8; 25];
    held.read_exact(&mut continued).unwrap();
    assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");

    // B: a second connection, silent; C, a third, is over max_connections
    // (connections are admitted in the order they are accepted).
    let silent = UnixStream::connect(socket).unwrap();
    let (code, head, text) = request_head(socket, HEALTH);
    assert_eq!(code, 503, "{text}");
    assert!(retries_after_a_second(&head), "{head}");
    assert!(text.contains("max_connections"), "{text}");
    drop(silent);

    // With B closed, an embed request is shed for the slot A holds.
    let (code, head, text) = admitted(|| embed_raw(socket, &body));
    assert_eq!(code, 503, "{text}");
    assert!(retries_after_a_second(&head), "{head}");
    assert!(
        text.contains("1 requests are in flight (max_in_flight)"),
        "{text}"
    );
    // A refused body far larger than the socket's buffers is read on, so
    // its client gets the 503 rather than a reset connection.
    let large = vec![0u8; 8 << 20];
    let (code, _, text) = admitted(|| embed_raw(socket, &large));
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("(max_in_flight)"), "{text}");
    // Health is not an in-flight request: it answers while A waits.
    let (code, _, text) = admitted(|| request_head(socket, HEALTH));
    assert_eq!(code, 200, "{text}");

    // A finishes as it would have on an idle server.
    held.write_all(&body).unwrap();
    let (code, text) = read_response(&mut held).unwrap();
    assert_eq!(code, 200, "{text}");
    // The slot is free again.
    let (code, _, text) = admitted(|| embed_raw(socket, &body));
    assert_eq!(code, 200, "{text}");

    let (_, _, m) = admitted(|| {
        request_head(
            socket,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    });
    assert_eq!(
        metric(&m, "tailor_shed_total{reason=\"in_flight\"}"),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric(&m, "tailor_shed_total{reason=\"connections\"}") >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tailor_requests_total{endpoint=\"/v1/embed\",code=\"200\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

#[test]
fn a_body_trickled_a_byte_at_a_time_is_cut_off_at_the_body_deadline() {
    let (_config, server) = start_with_config("[serve]\nbody_timeout_s = 1\n");
    let mut stream = UnixStream::connect(&server.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(embed_head(100_000, "").as_bytes())
        .unwrap();
    // A byte every 200 ms: a per-read idle timeout would never fire; the
    // whole body would take 5.5 hours.
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..100_000 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let (code, text) = read_response(&mut stream).unwrap();
    assert_eq!(code, 408, "{text}");
    assert!(text.contains("(body_timeout_s)"), "{text}");
    drop(stream);
    trickle.join().unwrap();
    let m = server.metrics();
    assert_eq!(
        metric(
            &m,
            "tailor_requests_total{endpoint=\"/v1/embed\",code=\"408\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn a_silent_or_idle_connection_is_closed_at_the_header_timeout() {
    let (_config, server) = start_with_config("[serve]\nheader_timeout_s = 1\n");
    // hyper's own default is 30 s: a read timeout of 15 s tells them apart.
    let connect = || {
        let stream = UnixStream::connect(&server.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
    };
    // Half a request head, then nothing: closed, perhaps after a 408.
    let mut half = connect();
    half.write_all(b"GET /v1/health HTTP/1.1\r\nHost:").unwrap();
    let mut rest = Vec::new();
    half.read_to_end(&mut rest)
        .expect("closed by the server, not timed out by the client");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );

    // A kept-alive connection idle after its answer: closed.
    let mut idle = connect();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (code, _, body) = read_response_head(&mut idle)
        .expect("answered, then closed by the server, not timed out by the client");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn images_over_max_pixels_are_refused_with_413_naming_the_limit() {
    let (_config, server) = start_with_config("[serve]\nmax_pixels = 500\n");
    let (code, body) = server.embed("image/png", "", &png(PNG_JPEG_COLOUR, 20, 25));
    assert_eq!(code, 200, "at the limit: {body}");
    let (code, body) = server.embed("image/png", "", &png(PNG_JPEG_COLOUR, 21, 25));
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        body["error"],
        "the PNG is 21x25, over the limit of 500 pixels (max_pixels)"
    );
    // The 24x16 JPEG fits; declared 24x32 (the frame header edited), it
    // does not, however little data follows.
    let mut jpeg = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/serve/colour.jpg"),
    )
    .unwrap();
    let (code, body) = server.embed("image/jpeg", "", &jpeg);
    assert_eq!(code, 200, "{body}");
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&32u16.to_be_bytes());
    let (code, body) = server.embed("image/jpeg", "", &jpeg);
    assert_eq!(code, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("24x32"), "{body}");
}

#[test]
fn the_unix_socket_is_0660_in_the_configured_group() {
    // A group other than the process's own, where the test can give one.
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let primary: u32 = id("-g").trim().parse().unwrap();
    let group = if id("-u").trim() == "0" {
        primary + 4242
    } else {
        id("-G")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .find(|&g| g != primary)
            .unwrap_or(primary)
    };
    let (_config, server) = start_with_config(&format!("socket_group = \"{group}\"\n"));
    let meta = std::fs::symlink_metadata(&server.socket).unwrap();
    assert!(meta.file_type().is_socket());
    // The test runs under umask 022 (0755 for a new socket), typically.
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group);
    // Nothing is left of the private directory it was bound in.
    let left: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
