//! What the runtime measured and chose, read back for the chart: the
//! output of `runtime profile --json` and of `runtime select --json`, joined
//! with the bundle's sub-networks and their scores ([`Reports`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tailor_runtime::bundle::Bundle;
use tailor_runtime::manifest::Manifest;

use super::{Chart, Cost, Point};
use crate::Scores;

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
    #[error("--chosen {id}: no such sub-network in {} (it holds {known})", bundle.display())]
    UnknownChosen {
        bundle: PathBuf,
        id: String,
        known: String,
    },
    #[error("the chosen sub-network {id} has no latency in {}: profile it too", path.display())]
    ChosenUnmeasured { path: PathBuf, id: String },
}

/// The sub-network to mark on the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen<'a> {
    /// Named by the user (`--chosen`).
    Id(&'a str),
    /// The one a `runtime select --json` file chose.
    Selection(&'a Path),
}

/// The reports a bundle's chart is drawn with, read and checked against
/// its sub-networks before any image runs, so a bad report fails at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Reports {
    /// The profile and its p50 per sub-network; `None` draws against MACs.
    latency: Option<(PathBuf, BTreeMap<String, f64>)>,
    chosen: Option<String>,
}

/// A calibrated bundle as chart points, ready for [`Plotted::chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plotted {
    pub points: Vec<Point>,
    pub cost: Cost,
    pub chosen: Option<String>,
    /// The sub-networks left out: the profile did not measure them.
    pub unmeasured: Vec<String>,
}

impl Reports {
    /// Reads the `runtime profile --json` file at `latency` (if any) and the
    /// chosen sub-network, each checked to be one of `bundle`'s; a chosen one
    /// must have been profiled.
    pub fn read(
        bundle: &Bundle,
        latency: Option<&Path>,
        chosen: Option<Chosen<'_>>,
    ) -> Result<Reports, ReportError> {
        let manifest = bundle.manifest();
        let ids: Vec<&str> = manifest.subnets.iter().map(|s| s.id).collect();
        let latency = latency
            .map(|file| Ok::<_, ReportError>((file.to_owned(), read_latencies(file, &ids)?)))
            .transpose()?;
        let chosen = match chosen {
            Some(Chosen::Id(id)) if !ids.contains(&id) => {
                return Err(ReportError::UnknownChosen {
                    bundle: bundle.dir().to_owned(),
                    id: id.to_owned(),
                    known: ids.join(", "),
                })
            }
            Some(Chosen::Id(id)) => Some(id.to_owned()),
            Some(Chosen::Selection(file)) => Some(read_selection(file, &ids)?),
            None => None,
        };
        if let (Some(id), Some((file, latencies))) = (&chosen, &latency) {
            if !latencies.contains_key(id) {
                return Err(ReportError::ChosenUnmeasured {
                    path: file.clone(),
                    id: id.clone(),
                });
            }
        }
        Ok(Reports { latency, chosen })
    }

    /// The profile the latencies come from, if the chart is drawn against them.
    pub fn latency_file(&self) -> Option<&Path> {
        self.latency.as_ref().map(|(file, _)| file.as_path())
    }

    /// Joins `scores` (in `manifest`'s order) with each sub-network's cost:
    /// its MACs, or its measured latency, leaving out the unmeasured.
    pub fn join(&self, manifest: &Manifest<'_>, scores: &[Scores]) -> Plotted {
        let scored = manifest.subnets.iter().zip(scores);
        let point = |id: &str, cost: f64, scores: &Scores| Point {
            id: id.to_owned(),
            cost,
            quality: scores.quality(),
        };
        let (points, cost, unmeasured) = match &self.latency {
            None => (
                scored.map(|(s, q)| point(s.id, s.macs as f64, q)).collect(),
                Cost::Macs,
                Vec::new(),
            ),
            Some((_, latencies)) => {
                let (measured, unmeasured): (Vec<_>, Vec<_>) =
                    scored.partition(|(s, _)| latencies.contains_key(s.id));
                let points = measured
                    .into_iter()
                    .map(|(s, q)| point(s.id, latencies[s.id], q))
                    .collect();
                let unmeasured = unmeasured.iter().map(|(s, _)| s.id.to_owned()).collect();
                (points, Cost::LatencyMs, unmeasured)
            }
        };
        Plotted {
            points,
            cost,
            chosen: self.chosen.clone(),
            unmeasured,
        }
    }
}

impl Plotted {
    /// The chart of these points, `quality` naming the vertical axis.
    pub fn chart<'a>(&'a self, quality: &'a str) -> Chart<'a> {
        Chart {
            points: &self.points,
            cost: self.cost,
            quality,
            chosen: self.chosen.as_deref(),
        }
    }
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
    subnet: SubnetId,
}

#[derive(Deserialize)]
struct SubnetId {
    id: String,
}

const PROFILE: &str = "runtime profile --json";
const SELECT: &str = "runtime select --json";

/// The median latency (`p50_ms`) of every sub-network in a
/// `runtime profile --json` file, each checked to be one of `ids` (the
/// bundle's).
fn read_latencies(path: &Path, ids: &[&str]) -> Result<BTreeMap<String, f64>, ReportError> {
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
fn read_selection(path: &Path, ids: &[&str]) -> Result<String, ReportError> {
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

    fn scores(ids: &[&str]) -> Vec<Scores> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| Scores {
                id: (*id).to_owned(),
                knn_top1: Some(50.0 + i as f64),
                fidelity: 0.5,
            })
            .collect()
    }

    /// Catches a latency joined to the wrong sub-network, a left-out one
    /// plotted at cost zero, and a chosen one that was never profiled
    /// accepted.
    #[test]
    fn the_join_gives_each_subnet_its_own_latency_or_leaves_it_out() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/bundle-tiny");
        let bundle = Bundle::open(&fixture).unwrap();
        let manifest = bundle.manifest();
        let scores = scores(&["w32-d2", "w32-d3", "w32-d4"]);
        let (_dir, profile) = file(
            r#"{"results": [{"id": "w32-d4", "p50_ms": 4.0}, {"id": "w32-d2", "p50_ms": 2.0}]}"#,
        );

        let costs = |plotted: &Plotted| -> Vec<(String, f64, f64)> {
            let points = plotted.points.iter();
            points.map(|p| (p.id.clone(), p.cost, p.quality)).collect()
        };
        let expected = |points: &[(&str, f64, f64)]| -> Vec<(String, f64, f64)> {
            points
                .iter()
                .map(|&(id, c, q)| (id.to_owned(), c, q))
                .collect()
        };

        let macs = Reports::read(&bundle, None, None).unwrap();
        let plotted = macs.join(&manifest, &scores);
        assert_eq!(
            costs(&plotted),
            expected(&[
                ("w32-d2", 553088.0, 50.0),
                ("w32-d3", 780480.0, 51.0),
                ("w32-d4", 1007872.0, 52.0)
            ])
        );
        assert_eq!((plotted.cost, plotted.chosen), (Cost::Macs, None));

        let timed = Reports::read(&bundle, Some(&profile), Some(Chosen::Id("w32-d4"))).unwrap();
        assert_eq!(timed.latency_file(), Some(profile.as_path()));
        let plotted = timed.join(&manifest, &scores);
        assert_eq!(
            costs(&plotted),
            expected(&[("w32-d2", 2.0, 50.0), ("w32-d4", 4.0, 52.0)])
        );
        assert_eq!(plotted.unmeasured, ["w32-d3"]);
        assert_eq!(plotted.chart("q").chosen, Some("w32-d4"));
        assert_eq!(plotted.cost, Cost::LatencyMs);

        let err = Reports::read(&bundle, Some(&profile), Some(Chosen::Id("w32-d3")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w32-d3 has no latency in") && err.contains("report.json"),
            "{err}"
        );
        let err = Reports::read(&bundle, None, Some(Chosen::Id("w8-d1")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--chosen w8-d1: no such sub-network in") && err.contains("bundle-tiny"),
            "{err}"
        );
    }
}
