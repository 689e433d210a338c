//! What a killed writer left beside a destination, cleared by the next one.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use super::parent;

/// Clears the [`sibling`](super::sibling)s of `dest` whose process is gone:
/// a temporary file or staged directory is removed; an old tree set aside
/// by a directory swap that did not finish is moved back if `dest` is
/// missing, else removed. Best effort: a writer's own error is what matters.
pub(super) fn sweep(dest: &Path) {
    let (Some(name), Ok(entries)) = (dest.file_name(), fs::read_dir(parent(dest))) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(what) = abandoned(&file_name, name) else {
            continue;
        };
        let path = entry.path();
        if what == "old" && dest.symlink_metadata().is_err() && fs::rename(&path, dest).is_ok() {
            continue;
        }
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
}

/// `Some("tmp" | "old")` when `entry` is a `.NAME.WHAT-PID-N` sibling of
/// `name` made by a process no longer running.
fn abandoned<'a>(entry: &'a OsStr, name: &OsStr) -> Option<&'a str> {
    let rest = entry
        .to_str()?
        .strip_prefix('.')?
        .strip_prefix(name.to_str()?)?
        .strip_prefix('.')?;
    let (what, rest) = rest.split_once('-')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    (matches!(what, "tmp" | "old") && !running(pid.parse().ok()?)).then_some(what)
}

/// Whether process `pid` exists; `true` where `/proc` cannot tell, so that
/// nothing is swept there.
fn running(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}
