//! `runtime --config FILE`: a service's bundle, limits and engine in a small
//! TOML file (`/etc/tailor/runtime.toml` in a pack), so the unit's command
//! line stays fixed while the deployer edits the file. Flags override it.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};
use tailor_runtime::engine::ExecutionProvider;
use tailor_runtime::select::{EngineChoice, Percentile, Precisions};

/// The keys a config file may set; any other key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bundle: Option<PathBuf>,
    #[serde(default, deserialize_with = "positive")]
    pub latency_ms: Option<f64>,
    #[serde(default, deserialize_with = "percentile")]
    pub percentile: Option<Percentile>,
    #[serde(default, deserialize_with = "positive")]
    pub memory_mb: Option<f64>,
    #[serde(default, deserialize_with = "fraction")]
    pub memory_fraction: Option<f64>,
    #[serde(default, deserialize_with = "parsed")]
    pub engine: Option<EngineChoice>,
    #[serde(default, deserialize_with = "parsed")]
    pub provider: Option<ExecutionProvider>,
    pub threads: Option<usize>,
    /// `--precision`: e.g. `"fp32,int8"`.
    #[serde(default, deserialize_with = "parsed")]
    pub precision: Option<Precisions>,
    pub ort_library: Option<PathBuf>,
    /// `serve` only; other commands ignore it.
    #[cfg(feature = "serve")]
    #[serde(default, deserialize_with = "parsed")]
    pub listen: Option<tailor_runtime::serve::Listen>,
    #[cfg(not(feature = "serve"))]
    pub listen: Option<serde::de::IgnoredAny>,
    /// `serve` only: the group of a `unix:` socket.
    pub socket_group: Option<String>,
    /// `serve` only: the `[serve]` table, the server's bounds.
    #[cfg(feature = "serve")]
    #[serde(default)]
    pub serve: tailor_runtime::serve::Limits,
    #[cfg(not(feature = "serve"))]
    pub serve: Option<serde::de::IgnoredAny>,
    pub cache: Option<PathBuf>,
    /// `serve` only: select again, afresh, this many seconds after start-up
    /// when the start-up decision was made beside other load; unset: never.
    #[serde(
        default,
        rename = "reselect_after_boot_s",
        deserialize_with = "seconds"
    )]
    pub reselect_after_boot: Option<std::time::Duration>,
    /// Decisions shipped in the pack (`--shipped`).
    pub shipped: Option<PathBuf>,
}

impl Config {
    /// Reads `path`; relative paths in it are relative to its directory.
    pub fn read(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let (line, key) = e
                .span()
                .map(|span| locate(&text, span.start))
                .unwrap_or_default();
            let key = key.map(|k| format!("`{k}`: ")).unwrap_or_default();
            anyhow::anyhow!("{}, line {line}: {key}{}", path.display(), e.message())
        })?;
        anyhow::ensure!(
            config.memory_mb.is_none() || config.memory_fraction.is_none(),
            "{}: set memory_mb or memory_fraction, not both",
            path.display()
        );
        let dir = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut config.bundle,
            &mut config.ort_library,
            &mut config.cache,
            &mut config.shipped,
        ]
        .into_iter()
        .flatten()
        {
            *p = dir.join(&*p);
        }
        Ok(config)
    }
}

/// The 1-based line of byte `offset` in `text`, and the key assigned on it.
fn locate(text: &str, offset: usize) -> (usize, Option<String>) {
    let before = &text[..offset.min(text.len())];
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"').to_owned());
    (before.matches('\n').count() + 1, key)
}

/// A value written as its command-line spelling, parsed as the flag is.
fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn percentile<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Percentile>, D::Error> {
    Percentile::try_from(u8::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(Some(v))
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} is not a positive number"
        )))
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let v = f64::deserialize(d)?;
    match std::time::Duration::try_from_secs_f64(v) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(serde::de::Error::custom(format!(
            "{v} is not a positive number of seconds"
        ))),
    }
}

fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)?;
    if v > 0.0 && v <= 1.0 {
        Ok(Some(v))
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} is not a fraction in (0, 1]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, text).unwrap();
        Config::read(&path).map_err(|e| {
            anyhow::anyhow!(format!("{e:#}").replace(&path.display().to_string(), "FILE"))
        })
    }

    #[test]
    fn every_key_reads_as_its_flag_would() {
        let c = parse(
            "bundle = \"/opt/b\"\nlatency_ms = 25\npercentile = 99\nmemory_fraction = 0.4\n\
             engine = \"ort\"\nprovider = \"tensorrt\"\nthreads = 4\nlisten = \"unix:/run/s\"\n",
        )
        .unwrap();
        assert_eq!(c.bundle.as_deref(), Some(Path::new("/opt/b")));
        assert_eq!(c.latency_ms, Some(25.0), "an integer is a number of ms");
        assert_eq!(c.percentile.map(Percentile::value), Some(99));
        assert_eq!(c.memory_fraction, Some(0.4));
        assert_eq!(c.engine, Some("ort".parse().unwrap()));
        assert_eq!(c.provider, Some(ExecutionProvider::TensorRt));
        assert_eq!(c.threads, Some(4));
        assert_eq!(c.listen, Some("unix:/run/s".parse().unwrap()));
    }

    #[test]
    fn the_reselection_timer_is_a_positive_number_of_seconds_or_off() {
        let c = parse(
            "reselect_after_boot_s = 120
",
        )
        .unwrap();
        assert_eq!(
            c.reselect_after_boot,
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(parse("").unwrap().reselect_after_boot, None);
        for bad in ["0", "-1", "1e300"] {
            let err = parse(&format!("reselect_after_boot_s = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is not a positive number of seconds"), "{err}");
        }
    }

    #[cfg(feature = "serve")]
    #[test]
    fn the_serve_table_sets_the_servers_bounds_and_keeps_the_rest_default() {
        use tailor_runtime::serve::Limits;
        let c =
            parse("socket_group = \"tailor\"\n[serve]\nmax_in_flight = 2\nbody_timeout_s = 0.5\n")
                .unwrap();
        assert_eq!(c.socket_group.as_deref(), Some("tailor"));
        assert_eq!(
            c.serve,
            Limits {
                max_in_flight: 2.try_into().unwrap(),
                body_timeout: std::time::Duration::from_millis(500),
                ..Limits::default()
            }
        );
        assert_eq!(parse("").unwrap().serve, Limits::default());
        for (text, expected) in [
            ("[serve]\nmax_connections = 0\n", "`max_connections`: "),
            (
                "[serve]\nheader_timeout_s = 0\n",
                "0 is not a positive number of seconds",
            ),
            (
                "[serve]\nbody_timeout_s = 1e300\n",
                "is not a positive number of seconds",
            ),
            (
                "[serve]\nmax_inflight = 2\n",
                "unknown field `max_inflight`",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        std::fs::write(&path, "bundle = \"b\"\ncache = \"/var/c\"\n").unwrap();
        let c = Config::read(&path).unwrap();
        assert_eq!(c.bundle, Some(dir.path().join("b")));
        assert_eq!(c.cache.as_deref(), Some(Path::new("/var/c")));
    }

    #[test]
    fn mistakes_name_the_line_and_the_key() {
        for (text, expected) in [
            (
                "latency_ms = 5\nlatency = 5\n",
                "FILE, line 2: `latency`: unknown field",
            ),
            (
                "latency_ms = \"fast\"\n",
                "FILE, line 1: `latency_ms`: invalid type",
            ),
            (
                "\nlatency_ms = -1\n",
                "FILE, line 2: `latency_ms`: -1 is not a positive",
            ),
            (
                "percentile = 95\n",
                "FILE, line 1: `percentile`: percentile 95 is not",
            ),
            (
                "percentile = \"90\"\n",
                "FILE, line 1: `percentile`: invalid type",
            ),
            (
                "memory_fraction = 1.5\n",
                "FILE, line 1: `memory_fraction`: 1.5 is not",
            ),
            ("engine = \"gpu\"\n", "FILE, line 1: `engine`: "),
            ("listen = \"8470\"\n", "FILE, line 1: `listen`: "),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
        let err = parse("memory_mb = 900\nmemory_fraction = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }
}
