//! Running a trial, the measurement of candidates, where [`Isolation`]
//! says: in this process, or in a child process. A child starts each
//! measurement from a clean process: its peak memory includes the load and
//! nothing left over from earlier candidates, a candidate the kernel's
//! out-of-memory killer stops (or that crashes inside an engine) is a
//! finding about that candidate instead of the end of the search, and the
//! selecting process stays small.
//!
//! The child is the same program re-executed with [`CHILD_COMMAND`]: a
//! program that measures in children calls [`child_main`] first thing in
//! `main`. The [`Job`] goes to the child's stdin as JSON, the [`Reply`]
//! comes back as the last line of its stdout.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ndarray::Array4;
use serde::{Deserialize, Serialize};

use crate::engine::{self, EngineError, EngineKind, EngineOptions};
use crate::profile::{self, Load, MeasureOptions, Measurement};

/// The hidden first argument that makes a program a measuring child.
pub const CHILD_COMMAND: &str = "__tailor-measure-child";

/// What a child gets beyond its runs: starting, loading, the engine's set-up.
const DEADLINE_FLOOR: Duration = Duration::from_secs(60);
/// A run may take this many times the latency limit before the candidate is
/// hopeless and its child is stopped.
const DEADLINE_SLACK: f64 = 10.0;
/// How often a parent looks whether its child has finished.
const POLL: Duration = Duration::from_millis(20);

/// Where candidates are measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// In the selecting process: no process start, but the peak memory of
    /// a candidate includes heap kept from earlier ones, and a crash or an
    /// out-of-memory kill ends the selection.
    InProcess,
    /// In a child process running this executable, whose `main` calls
    /// [`child_main`].
    Child(PathBuf),
}

impl Isolation {
    /// Children running the current executable.
    pub fn current_exe() -> io::Result<Isolation> {
        std::env::current_exe().map(Isolation::Child)
    }
}

/// What to measure: the graphs are loaded in order and timed round-robin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub graphs: Vec<PathBuf>,
    pub engine: EngineKind,
    pub options: EngineOptions,
    pub measure: MeasureOptions,
    /// `[batch, 3, H, W]`
    pub input_shape: [usize; 4],
}

impl Job {
    /// How long a child may take to measure this job when a run should
    /// take `latency_ms`: every graph's runs at [`DEADLINE_SLACK`] times
    /// the limit, twice the minimum time, plus [`DEADLINE_FLOOR`];
    /// saturating, never a panic, whatever the numbers.
    pub fn deadline(&self, latency_ms: f64) -> Duration {
        let m = &self.measure;
        let runs = 1 + m.warmup_runs.saturating_add(m.min_runs);
        let per_run =
            Duration::try_from_secs_f64(latency_ms * DEADLINE_SLACK / 1e3).unwrap_or(Duration::MAX);
        let graphs = u32::try_from(self.graphs.len()).unwrap_or(u32::MAX);
        per_run
            .saturating_mul(runs)
            .saturating_add(m.min_time.saturating_mul(2))
            .saturating_mul(graphs)
            .saturating_add(DEADLINE_FLOOR)
    }
}

/// What a child answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// One measurement per graph of the job, in order.
    Measured(Vec<Measurement>),
    /// The engine refused a graph.
    Engine {
        kind: String,
        systematic: bool,
        message: String,
    },
}

/// Why a job gave no measurement.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The engine could not load or run a graph.
    #[error("{message}")]
    Engine {
        /// A stable name of the error's kind, to recognise a repeat.
        kind: String,
        /// The same error would hit every candidate.
        systematic: bool,
        message: String,
    },
    /// The measurement ran out of memory.
    #[error("exceeds memory: {0}")]
    ExceedsMemory(String),
    /// The measuring process died.
    #[error("crashed: {0}")]
    Crashed(String),
    /// The measuring process outlived its deadline and was killed.
    #[error("no result within {} s: the measuring process was stopped", .0.as_secs())]
    TimedOut(Duration),
    /// No child process could be started.
    #[error("cannot start the measuring process {}: {source}", exe.display())]
    Spawn { exe: PathBuf, source: io::Error },
}

impl Failure {
    /// A stable name, equal for two failures of the same cause.
    pub fn kind(&self) -> &str {
        match self {
            Failure::Engine { kind, .. } => kind,
            Failure::ExceedsMemory(_) => "exceeds_memory",
            Failure::Crashed(_) => "crashed",
            Failure::TimedOut(_) => "timed_out",
            Failure::Spawn { .. } => "spawn",
        }
    }

    /// Whether the failure cannot depend on the candidate, so trying the
    /// next one is pointless.
    pub fn is_systematic(&self) -> bool {
        match self {
            Failure::Engine { systematic, .. } => *systematic,
            Failure::Spawn { .. } => true,
            Failure::ExceedsMemory(_) | Failure::Crashed(_) | Failure::TimedOut(_) => false,
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure::Engine {
            kind: e.kind().to_owned(),
            systematic: e.is_systematic(),
            message: format!("{:#}", anyhow::Error::from(e)),
        }
    }
}

/// Measures `job` where `isolation` says.
pub fn measure(isolation: &Isolation, job: &Job) -> Result<Vec<Measurement>, Failure> {
    measure_within(isolation, job, None)
}

/// Measures `job` where `isolation` says; a child that has not answered by
/// `deadline` is killed, and that is the job's failure (a job measured in
/// this process cannot be stopped, so it has none).
pub fn measure_within(
    isolation: &Isolation,
    job: &Job,
    deadline: Option<Duration>,
) -> Result<Vec<Measurement>, Failure> {
    match isolation {
        Isolation::InProcess => Ok(run(job)?),
        Isolation::Child(exe) => in_child(exe, job, deadline),
    }
}

/// Loads and measures the job's graphs in this process.
fn run(job: &Job) -> Result<Vec<Measurement>, EngineError> {
    let input = Array4::<f32>::zeros(job.input_shape);
    let loads = job
        .graphs
        .iter()
        .map(|graph| Box::new(move || engine::load(job.engine, graph, &job.options)) as Load<'_>)
        .collect();
    let measured = profile::measure_interleaved(loads, input.view(), &job.measure)?;
    Ok(measured.into_iter().map(|(_, m)| m).collect())
}

fn in_child(
    exe: &Path,
    job: &Job,
    deadline: Option<Duration>,
) -> Result<Vec<Measurement>, Failure> {
    let spawn_error = |source| Failure::Spawn {
        exe: exe.to_owned(),
        source,
    };
    let mut child = Command::new(exe)
        .arg(CHILD_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let request = serde_json::to_vec(job).expect("jobs serialise");
    if let Some(mut stdin) = child.stdin.take() {
        // A child that died at once shows in its status below.
        let _ = stdin.write_all(&request);
    }
    let out = wait(child, deadline)
        .map_err(spawn_error)?
        .ok_or_else(|| Failure::TimedOut(deadline.unwrap_or_default()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reply = out
        .stdout
        .lines()
        .map_while(Result::ok)
        .last()
        .and_then(|line| serde_json::from_str::<Reply>(&line).ok());
    match (out.status.success(), reply) {
        (true, Some(Reply::Measured(m))) if m.len() == job.graphs.len() => Ok(m),
        (
            true,
            Some(Reply::Engine {
                kind,
                systematic,
                message,
            }),
        ) => Err(Failure::Engine {
            kind,
            systematic,
            message,
        }),
        _ => Err(classify_death(out.status, &stderr)),
    }
}

/// The child's output once it exits; `None` if `deadline` passed first, and
/// then the child is killed. Its pipes are drained meanwhile, so a chatty
/// child never blocks on a full pipe.
fn wait(mut child: Child, deadline: Option<Duration>) -> io::Result<Option<std::process::Output>> {
    let Some(deadline) = deadline else {
        return child.wait_with_output().map(Some);
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                // A read error ends the output; the status tells the rest.
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() >= deadline {
            // Already gone is as good as killed.
            let _ = child.kill();
            child.wait()?;
            break None;
        }
        std::thread::sleep(POLL);
    };
    let joined = |t: std::thread::JoinHandle<Vec<u8>>| t.join().unwrap_or_default();
    let (stdout, stderr) = (joined(stdout), joined(stderr));
    Ok(status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

/// Why a child ended without a reply.
fn classify_death(status: ExitStatus, stderr: &str) -> Failure {
    // Rust's allocation-failure handler prints this, then aborts.
    if let Some(line) = stderr.lines().find(|l| l.contains("memory allocation of")) {
        return Failure::ExceedsMemory(line.trim().to_owned());
    }
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    let context = last.map_or(String::new(), |l| format!(" ({})", l.trim()));
    match status.signal() {
        // SIGKILL is what the kernel's out-of-memory killer sends.
        Some(9) => Failure::ExceedsMemory(format!(
            "the measuring process was killed (SIGKILL), as the kernel's out-of-memory killer does{context}"
        )),
        Some(signal) => Failure::Crashed(format!(
            "the measuring process died of signal {signal}{context}"
        )),
        None => Failure::Crashed(format!(
            "the measuring process exited with {} and no result{context}",
            status.code().unwrap_or(-1)
        )),
    }
}

/// Serves one job if this process was started as a measuring child:
/// call it first in `main` and return its exit code when it gives one.
pub fn child_main() -> Option<ExitCode> {
    if std::env::args_os().nth(1)? != CHILD_COMMAND {
        return None;
    }
    let job: Job = match serde_json::from_reader(io::stdin().lock()) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("error: {CHILD_COMMAND}: unreadable job on stdin: {e}");
            return Some(ExitCode::from(2));
        }
    };
    let reply = match run(&job) {
        Ok(measured) => Reply::Measured(measured),
        Err(e) => Reply::Engine {
            kind: e.kind().to_owned(),
            systematic: e.is_systematic(),
            message: format!("{:#}", anyhow::Error::from(e)),
        },
    };
    let mut stdout = io::stdout().lock();
    let line = serde_json::to_string(&reply).expect("replies serialise");
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(_) => Some(ExitCode::from(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn sigkill_is_out_of_memory() {
        let f = classify_death(ExitStatus::from_raw(9), "");
        assert!(matches!(f, Failure::ExceedsMemory(_)), "{f:?}");
        assert!(!f.is_systematic());
    }

    #[test]
    fn a_failed_allocation_is_out_of_memory_whatever_the_signal() {
        let stderr = "memory allocation of 1073741824 bytes failed\n";
        let f = classify_death(ExitStatus::from_raw(6), stderr);
        assert!(
            matches!(&f, Failure::ExceedsMemory(why) if why.contains("1073741824")),
            "{f:?}"
        );
    }

    #[test]
    fn other_deaths_are_crashes_with_the_last_words() {
        let f = classify_death(ExitStatus::from_raw(11), "loading\nsegfault in kernel\n\n");
        assert!(
            matches!(&f, Failure::Crashed(why) if why.contains("signal 11") && why.contains("segfault in kernel")),
            "{f:?}"
        );
        let f = classify_death(exited(101), "thread 'main' panicked at x.rs:1:1\n");
        assert!(
            matches!(&f, Failure::Crashed(why) if why.contains("101") && why.contains("panicked")),
            "{f:?}"
        );
        assert_eq!(f.kind(), "crashed");
    }

    /// A job of `graphs` copies of a graph that is never loaded.
    fn job(graphs: usize, measure: MeasureOptions) -> Job {
        Job {
            graphs: vec![PathBuf::from("g.onnx"); graphs],
            engine: EngineKind::Tract,
            options: EngineOptions::default(),
            measure,
            input_shape: [1, 3, 8, 8],
        }
    }

    #[test]
    fn a_hung_child_is_stopped_at_its_deadline_and_is_the_jobs_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangs.sh");
        // Reads its job, then never answers (exec: the kill reaches it).
        std::fs::write(&path, "#!/bin/sh\ncat > /dev/null\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let job = job(1, MeasureOptions::default());
        let deadline = Some(Duration::from_millis(200));
        let f = measure_within(&Isolation::Child(path), &job, deadline).unwrap_err();
        assert!(matches!(f, Failure::TimedOut(_)), "{f:?}");
        assert!(!f.is_systematic() && f.kind() == "timed_out");
    }

    #[test]
    fn deadlines_grow_with_the_limit_and_never_overflow() {
        let job = |graphs, min_time| {
            job(
                graphs,
                MeasureOptions {
                    warmup_runs: 3,
                    min_runs: 10,
                    min_time,
                    max_runs: 1000,
                },
            )
        };
        let one = job(1, Duration::from_secs(1));
        // 14 runs at 10 x 20 ms, 2 s of minimum time, the 60 s floor.
        assert_eq!(
            one.deadline(20.0),
            Duration::from_millis(2_800 + 2_000 + 60_000)
        );
        assert_eq!(
            job(2, Duration::from_secs(1)).deadline(20.0),
            Duration::from_millis(2 * (2_800 + 2_000) + 60_000)
        );
        assert_eq!(one.deadline(1e300), Duration::MAX);
        assert_eq!(job(1, Duration::MAX).deadline(20.0), Duration::MAX);
    }

    #[test]
    fn a_missing_executable_is_systematic() {
        let job = job(1, MeasureOptions::default());
        let f = measure(&Isolation::Child("/nonexistent/runtime".into()), &job).unwrap_err();
        assert!(
            matches!(f, Failure::Spawn { .. }) && f.is_systematic(),
            "{f:?}"
        );
        assert!(f.to_string().contains("/nonexistent/runtime"), "{f}");
    }
}
