//! Logging and the metrics registry.
//!
//! Each component registers its metrics in its own prefixed sub-registry (`huizhen_sfu_`,
//! `huizhen_signaling_`, ...); `/metrics` concatenates them with the process collector.

use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// All metric registries of one server.
#[derive(Clone)]
pub struct Metrics {
    registries: Vec<Registry>,
    runtime: RuntimeGauges,
}

/// The tokio runtime's own figures, read when `/metrics` is rendered: a task that never ends
/// (a leak a soak must see) shows as alive tasks that do not come back to their baseline.
#[derive(Clone)]
struct RuntimeGauges {
    alive_tasks: IntGauge,
    workers: IntGauge,
    global_queue: IntGauge,
    heap_allocated: IntGauge,
    heap_resident: IntGauge,
}

impl RuntimeGauges {
    fn register(registry: &Registry) -> RuntimeGauges {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        RuntimeGauges {
            alive_tasks: gauge(
                "huizhen_runtime_alive_tasks",
                "Tasks alive in the runtime that renders /metrics (spawned and not yet finished).",
            ),
            workers: gauge("huizhen_runtime_workers", "Worker threads of that runtime."),
            global_queue: gauge(
                "huizhen_runtime_global_queue_depth",
                "Tasks waiting in that runtime's global queue.",
            ),
            heap_allocated: gauge(
                "huizhen_process_heap_allocated_bytes",
                "Bytes the allocator (jemalloc) has handed out and not had back: live data.",
            ),
            heap_resident: gauge(
                "huizhen_process_heap_resident_bytes",
                "Bytes of memory the allocator holds in RAM (live data, its metadata and pages \
                 freed but not yet returned).",
            ),
        }
    }

    /// Reads the current runtime's figures (none outside a runtime) and the allocator's (zero
    /// where jemalloc is not the process's allocator, as in tests).
    fn update(&self) {
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            if let Ok(n) = tikv_jemalloc_ctl::stats::allocated::read() {
                self.heap_allocated.set(n as i64);
            }
            if let Ok(n) = tikv_jemalloc_ctl::stats::resident::read() {
                self.heap_resident.set(n as i64);
            }
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let m = handle.metrics();
            self.alive_tasks.set(m.num_alive_tasks() as i64);
            self.workers.set(m.num_workers() as i64);
            self.global_queue.set(m.global_queue_depth() as i64);
        }
    }
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
        let runtime = RuntimeGauges::register(&process);
        Metrics {
            registries: vec![process],
            runtime,
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
        self.runtime.update();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alive_tasks_follow_the_runtime() {
        let metrics = Metrics::new();
        let text = metrics.render();
        let before = value(&text, "huizhen_runtime_alive_tasks");
        assert_eq!(value(&text, "huizhen_runtime_workers"), 2);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let held: Vec<_> = (0..5)
            .map(|_| {
                let mut rx = rx.clone();
                tokio::spawn(async move { rx.wait_for(|go| *go).await.is_ok() })
            })
            .collect();
        assert_eq!(
            value(&metrics.render(), "huizhen_runtime_alive_tasks"),
            before + 5
        );
        tx.send(true).unwrap();
        for task in held {
            assert!(task.await.unwrap());
        }
        assert_eq!(
            value(&metrics.render(), "huizhen_runtime_alive_tasks"),
            before
        );
    }
}
