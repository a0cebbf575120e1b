//! Logging and the metrics registry.
//!
//! Each component registers its metrics in its own prefixed sub-registry (`huizhen_sfu_`,
//! `huizhen_signaling_`, ...); `/metrics` concatenates them with the process collector.

use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// All metric registries of one server.
#[derive(Clone)]
pub struct Metrics {
    registries: Vec<Registry>,
}

impl Metrics {
    /// An empty set with the process collector (CPU, memory, file descriptors).
    pub fn new() -> Metrics {
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "huizhen",
            );
            let _ = process.register(Box::new(collector));
        }
        Metrics {
            registries: vec![process],
        }
    }

    /// A new registry whose metric names start with `huizhen_<component>_`.
    pub fn component(&mut self, component: &str) -> Registry {
        let registry = Registry::new_custom(Some(format!("huizhen_{component}")), None)
            .expect("valid registry prefix");
        self.registries.push(registry.clone());
        registry
    }

    /// Everything in Prometheus text format.
    pub fn render(&self) -> String {
        let families: Vec<_> = self.registries.iter().flat_map(|r| r.gather()).collect();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Install the global tracing subscriber: `RUST_LOG` filter (default `info`), text or JSON.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or a pipe full of escape codes is
    // unreadable and defeats grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if result.is_err() {
        // Already installed (tests start several servers in one process).
    }
}
