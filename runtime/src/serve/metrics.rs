//! The counters `GET /metrics` exposes, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the inference latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    /// By (endpoint, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<Histogram>,
    reselections: AtomicU64,
    /// By [`Shed`] reason.
    shed: [AtomicU64; 2],
}

/// Why a request was answered 503 unserved.
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    /// `max_connections` connections were open.
    Connections,
    /// `max_in_flight` embed requests were being served.
    InFlight,
}

impl Shed {
    const ALL: [Shed; 2] = [Shed::Connections, Shed::InFlight];

    fn label(self) -> &'static str {
        match self {
            Shed::Connections => "connections",
            Shed::InFlight => "in_flight",
        }
    }
}

#[derive(Default)]
struct Histogram {
    /// Observations at or below each of [`BUCKETS`] (not cumulative).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, code: u16) {
        *lock(&self.requests).entry((endpoint, code)).or_default() += 1;
    }

    pub fn inference(&self, seconds: f64) {
        let mut h = lock(&self.latency);
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            h.counts[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn shed(&self, why: Shed) {
        self.shed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reselected(&self) {
        self.reselections.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition, with `subnet` as the selected sub-network.
    pub fn render(&self, subnet: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP tailor_requests_total HTTP requests answered, by endpoint and status code.\n# TYPE tailor_requests_total counter\n");
        for ((endpoint, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "tailor_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP tailor_inference_seconds Time the engine took per embed request.\n# TYPE tailor_inference_seconds histogram\n");
        let h = lock(&self.latency);
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "tailor_inference_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "tailor_inference_seconds_bucket{{le=\"+Inf\"}} {}\ntailor_inference_seconds_sum {}\ntailor_inference_seconds_count {}",
            h.count, h.sum, h.count
        );
        let _ = writeln!(
            out,
            "# HELP tailor_selected_subnet The sub-network serving requests.\n# TYPE tailor_selected_subnet gauge\ntailor_selected_subnet{{id=\"{}\"}} 1",
            escape(subnet)
        );
        let _ = writeln!(
            out,
            "# HELP tailor_reselections_total Selections made after start-up (SIGHUP, power mode).\n# TYPE tailor_reselections_total counter\ntailor_reselections_total {}",
            self.reselections.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tailor_shed_total Requests answered 503 because the server was full, by the bound that was reached.\n# TYPE tailor_shed_total counter\n");
        for why in Shed::ALL {
            let _ = writeln!(
                out,
                "tailor_shed_total{{reason=\"{}\"}} {}",
                why.label(),
                self.shed[why as usize].load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Metrics stay readable after a panic elsewhere: every update is complete
/// before the guard drops.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_overflow_counts_only_in_inf() {
        let m = Metrics::default();
        m.inference(0.0005);
        m.inference(0.003);
        m.inference(60.0);
        let text = m.render("w2_d3");
        assert!(text.contains("tailor_inference_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("tailor_inference_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("tailor_inference_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("tailor_inference_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("tailor_inference_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("tailor_inference_seconds_count 3\n"));
        let sum = format!("tailor_inference_seconds_sum {}\n", 0.0005 + 0.003 + 60.0);
        assert!(text.contains(&sum), "{text}");
        assert!(text.contains("tailor_selected_subnet{id=\"w2_d3\"} 1\n"));
    }

    #[test]
    fn requests_are_counted_per_endpoint_and_code() {
        let m = Metrics::default();
        m.request("/v1/embed", 200);
        m.request("/v1/embed", 200);
        m.request("/v1/embed", 415);
        let text = m.render("a\"b");
        assert!(text.contains("tailor_requests_total{endpoint=\"/v1/embed\",code=\"200\"} 2\n"));
        assert!(text.contains("tailor_requests_total{endpoint=\"/v1/embed\",code=\"415\"} 1\n"));
        assert!(text.contains("tailor_selected_subnet{id=\"a\\\"b\"} 1\n"));
    }

    #[test]
    fn shedding_is_counted_per_bound() {
        let m = Metrics::default();
        m.shed(Shed::InFlight);
        m.shed(Shed::InFlight);
        m.shed(Shed::Connections);
        let text = m.render("w");
        assert!(
            text.contains("tailor_shed_total{reason=\"connections\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tailor_shed_total{reason=\"in_flight\"} 2\n"),
            "{text}"
        );
    }
}
