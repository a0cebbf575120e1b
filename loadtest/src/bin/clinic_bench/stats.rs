//! Latency histograms and the result table.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies in microseconds.
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Latency {
    /// Record one.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        self.hist.saturating_record(us);
    }

    /// How many.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Quantile in milliseconds (0 when empty).
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.mean() / 1000.0
    }

    /// Largest, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    /// `p50 / p99 / max` text.
    pub fn summary(&self) -> String {
        if self.hist.is_empty() {
            return "no samples".into();
        }
        format!(
            "p50 {} / p99 {} / max {} ms (n={})",
            fmt_ms(self.ms(0.5)),
            fmt_ms(self.ms(0.99)),
            fmt_ms(self.max_ms()),
            self.count()
        )
    }
}

/// Milliseconds with sensible precision.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Bytes as MiB.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// The result table: scenario, metric, value.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    /// Add a row (and say it on stderr, so a long run shows progress).
    pub fn add(&mut self, scenario: &str, metric: &str, value: impl Into<String>) {
        let value = value.into();
        eprintln!("  [{scenario}] {metric}: {value}");
        self.rows
            .push((scenario.to_owned(), metric.to_owned(), value));
    }

    /// Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| scenario | metric | value |\n| --- | --- | --- |\n");
        for (s, m, v) in &self.rows {
            out.push_str(&format!("| {} | {} | {} |\n", esc(s), esc(m), esc(v)));
        }
        out
    }

    /// JSON array of `{scenario, metric, value}`.
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|(s, m, v)| json!({ "scenario": s, "metric": m, "value": v }))
                .collect(),
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}
