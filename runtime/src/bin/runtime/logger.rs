//! Where the library's `log` records go: stderr, one line each, prefixed
//! with sd-daemon(3)'s `<N>` priority when stderr is the journal (so
//! journald keeps each line's level) and with `level: ` otherwise.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The most verbose level written.
const LEVEL: LevelFilter = LevelFilter::Info;

/// Installs the logger; call once, first thing in `main`.
pub fn install() {
    let logger = Stderr {
        journal: stderr_is_journal(),
    };
    log::set_logger(Box::leak(Box::new(logger))).expect("the logger is installed once");
    log::set_max_level(LEVEL);
}

struct Stderr {
    journal: bool,
}

impl Log for Stderr {
    /// tailor's own records only: tract logs its CPU detection at `info` on
    /// every start on arm64, which is not the service's news.
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= LEVEL && metadata.target().starts_with("tailor")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            format!("<{}>{}\n", priority(record.level()), record.args())
        } else {
            format!("{}: {}\n", name(record.level()), record.args())
        };
        // One write per line, so concurrent records do not interleave; a
        // closed stderr has nowhere to report to.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// syslog's priority of a level, as sd-daemon(3)'s `SD_ERR` .. `SD_DEBUG`.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The prefix the binary's own `error:` and `warning:` lines use.
fn name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Whether stderr is the stream systemd connected to the journal: its
/// device and inode are `$JOURNAL_STREAM` (`DEV:INODE`, systemd.exec(5)).
/// The variable alone is not enough: a child whose stderr was redirected
/// to a file inherits it.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(fd)
        .metadata()
        .is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}
