//! What the runtime measured and chose, read back for the chart: the
//! output of `runtime profile --json` and of `runtime select --json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a runtime report could not be used. The file is always named.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not the output of `{command}`: {problem}", path.display())]
    Format {
        path: PathBuf,
        command: &'static str,
        problem: String,
    },
    #[error("{}: sub-network {id} is not in the bundle (it holds {known})", path.display())]
    UnknownId {
        path: PathBuf,
        id: String,
        known: String,
    },
}

/// `runtime profile --json`: `{"results": [{"id": ..., "p50_ms": ...}, ...]}`.
#[derive(Deserialize)]
struct Profile {
    results: Vec<Measured>,
}

#[derive(Deserialize)]
struct Measured {
    id: String,
    p50_ms: f64,
}

/// `runtime select --json`: `{"subnet": {"id": ...}, ...}`.
#[derive(Deserialize)]
struct Selection {
    subnet: Chosen,
}

#[derive(Deserialize)]
struct Chosen {
    id: String,
}

const PROFILE: &str = "runtime profile --json";
const SELECT: &str = "runtime select --json";

/// The median latency (`p50_ms`) of every sub-network in a
/// `runtime profile --json` file, each checked to be one of `ids` (the
/// bundle's).
pub fn read_latencies(path: &Path, ids: &[&str]) -> Result<BTreeMap<String, f64>, ReportError> {
    let profile: Profile = parse(path, PROFILE)?;
    if profile.results.is_empty() {
        return Err(format_error(
            path,
            PROFILE,
            "no sub-network was measured".into(),
        ));
    }
    let mut latencies = BTreeMap::new();
    for Measured { id, p50_ms } in profile.results {
        check_id(path, &id, ids)?;
        let problem = if !(p50_ms.is_finite() && p50_ms > 0.0) {
            format!("{id} has latency {p50_ms} ms")
        } else if latencies.insert(id.clone(), p50_ms).is_some() {
            format!("{id} is measured twice")
        } else {
            continue;
        };
        return Err(format_error(path, PROFILE, problem));
    }
    Ok(latencies)
}

/// The sub-network a `runtime select --json` file chose, checked to be one
/// of `ids` (the bundle's).
pub fn read_selection(path: &Path, ids: &[&str]) -> Result<String, ReportError> {
    let selection: Selection = parse(path, SELECT)?;
    check_id(path, &selection.subnet.id, ids)?;
    Ok(selection.subnet.id)
}

fn parse<T: for<'de> Deserialize<'de>>(
    path: &Path,
    command: &'static str,
) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format_error(path, command, e.to_string()))
}

fn format_error(path: &Path, command: &'static str, problem: String) -> ReportError {
    ReportError::Format {
        path: path.to_owned(),
        command,
        problem,
    }
}

fn check_id(path: &Path, id: &str, ids: &[&str]) -> Result<(), ReportError> {
    if ids.contains(&id) {
        return Ok(());
    }
    Err(ReportError::UnknownId {
        path: path.to_owned(),
        id: id.to_owned(),
        known: ids.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 3] = ["w32-d2", "w32-d4", "w64-d4"];

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn latencies_are_the_medians_of_the_profiled_subnets() {
        let (_dir, path) = file(
            r#"{"results": [
                {"id": "w32-d4", "p50_ms": 1.5, "p90_ms": 2.0, "load_ms": 9.0},
                {"id": "w64-d4", "p50_ms": 3.25, "p90_ms": 4.0, "load_ms": 9.0}
            ]}"#,
        );
        let latencies = read_latencies(&path, &IDS).unwrap();
        assert_eq!(
            latencies.into_iter().collect::<Vec<_>>(),
            [("w32-d4".to_owned(), 1.5), ("w64-d4".to_owned(), 3.25)]
        );
    }

    #[test]
    fn profiles_that_cannot_be_used_name_the_file_and_the_problem() {
        let cases = [
            (r#"{"subnet": {"id": "w32-d2"}}"#, "results"),
            (r#"{"results": []}"#, "no sub-network was measured"),
            ("p50 1.5", "expected value"),
            (r#"{"results": [{"id": "w32-d2"}]}"#, "p50_ms"),
            (
                r#"{"results": [{"id": "w32-d2", "p50_ms": 0}]}"#,
                "w32-d2 has latency 0 ms",
            ),
            (
                r#"{"results": [{"id": "w32-d2", "p50_ms": 1}, {"id": "w32-d2", "p50_ms": 2}]}"#,
                "measured twice",
            ),
            (
                r#"{"results": [{"id": "w96-d6", "p50_ms": 1}]}"#,
                "w96-d6 is not in the bundle (it holds w32-d2, w32-d4, w64-d4)",
            ),
        ];
        for (text, needle) in cases {
            let (_dir, path) = file(text);
            let err = read_latencies(&path, &IDS).unwrap_err().to_string();
            assert!(
                err.contains("report.json") && err.contains(needle),
                "{text}: {err}"
            );
        }
        let missing = Path::new("/nonexistent/profile.json");
        let err = read_latencies(missing, &IDS).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/profile.json"), "{err}");
    }

    #[test]
    fn the_selection_names_one_subnet_of_the_bundle() {
        let (_dir, path) = file(r#"{"subnet": {"id": "w32-d4", "width": 32}, "cache": "miss"}"#);
        assert_eq!(read_selection(&path, &IDS).unwrap(), "w32-d4");
        let (_dir, path) = file(r#"{"subnet": {"id": "w8-d1"}}"#);
        let err = read_selection(&path, &IDS).unwrap_err().to_string();
        assert!(
            err.contains("report.json") && err.contains("w8-d1 is not in the bundle"),
            "{err}"
        );
        let (_dir, path) = file(r#"{"results": []}"#);
        let err = read_selection(&path, &IDS).unwrap_err().to_string();
        assert!(
            err.contains("not the output of `runtime select --json`") && err.contains("subnet"),
            "{err}"
        );
    }
}
