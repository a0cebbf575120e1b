//! The async edge: one tokio task that performs the HTTP POSTs the core asks for.
//!
//! Callers hold a cheap, cloneable [`WebhookHandle`]. [`WebhookHandle::send`] only locks the
//! core for an enqueue and wakes the task, so clinic code never waits on the hospital's
//! network. The task loops: hand every due delivery to its own request future (at most
//! [`MAX_IN_FLIGHT`] at once), then sleep until the core's next deadline, a new event, a
//! finished request, or shutdown. It reads the clock and passes `now` in; all decisions stay
//! in [`WebhookQueue`].
//!
//! On shutdown the task keeps going for up to [`FLUSH_TIMEOUT`], giving every queued event an
//! immediate attempt; whatever is still undelivered then is counted as dropped and logged by
//! id. Events sent during the flush (e.g. `consultation.ended` for consultations cut short by
//! the shutdown) are still accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::queue::{Delivery, DeliveryId, Event, Outcome, WebhookQueue};
use super::{check_url, is_loopback, WebhookConfig, WebhookError, WebhookMetrics, MAX_IN_FLIGHT};

/// How long shutdown waits for queued events to be delivered.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the webhook sender.
pub struct Webhooks;

impl Webhooks {
    /// Validate `config`, register the metrics in `registry` (the `huizhen_webhook`-prefixed
    /// one), and start the sending task on the current tokio runtime. It flushes and stops
    /// when `shutdown` becomes `true` (or its sender is dropped).
    ///
    /// With no `url` configured this returns a disabled handle whose `send` does nothing; the
    /// metrics are registered all the same so dashboards look the same either way.
    pub fn spawn(
        config: WebhookConfig,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Result<WebhookHandle, WebhookError> {
        config.validate()?;
        // Checked before registering, so a failed start leaves the registry untouched.
        let runtime = if config.enabled() {
            let current = tokio::runtime::Handle::try_current();
            Some(current.map_err(|_| WebhookError::NoRuntime)?)
        } else {
            None
        };
        let metrics = WebhookMetrics::new(registry)?;
        let (Some(url), Some(runtime)) = (config.url.as_deref(), runtime) else {
            info!("webhooks disabled (no webhook.url)");
            return Ok(WebhookHandle { inner: None });
        };
        let url = check_url(url).map_err(|message| WebhookError::Config {
            field: "webhook.url",
            message,
        })?;
        let secret: Arc<[u8]> = config
            .secret
            .as_deref()
            .expect("validate() requires a secret with a url")
            .as_bytes()
            .into();

        // reqwest is built without a bundled crypto provider; use the process default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            // A redirected POST would lose its body or go somewhere the operator did not
            // configure; a 3xx is reported as a permanent failure instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("huizhen/", env!("CARGO_PKG_VERSION")));
        builder = if is_loopback(&url) {
            // An HTTP(S)_PROXY in the environment must not capture requests to this machine.
            builder.no_proxy()
        } else {
            builder.https_only(true)
        };
        let client = builder.build().map_err(WebhookError::Client)?;

        let queue = WebhookQueue::new(
            config.retry_policy(),
            config.queue_capacity,
            MAX_IN_FLIGHT,
            metrics.clone(),
            rand::random(),
        );
        let (stopped, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue,
                closed: false,
            }),
            wake: Notify::new(),
            stopped,
            metrics,
        });
        info!(
            host = url.host_str().unwrap_or(""),
            max_attempts = config.max_attempts,
            "webhooks enabled"
        );
        let driver = Driver {
            shared: shared.clone(),
            client,
            url,
            secret,
        };
        runtime.spawn(driver.run(shutdown));
        Ok(WebhookHandle {
            inner: Some(shared),
        })
    }
}

/// Sends events; cheap to clone, one per component that emits events.
#[derive(Clone)]
pub struct WebhookHandle {
    inner: Option<Arc<Shared>>,
}

impl std::fmt::Debug for WebhookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookHandle")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl WebhookHandle {
    /// A handle that sends nothing, for tests and tools that run without webhooks.
    pub fn disabled() -> WebhookHandle {
        WebhookHandle { inner: None }
    }

    /// Whether events go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queue an event of `event_type` (see [`super::event_type`]) that happened at
    /// `occurred_at_ms` (unix milliseconds). Never waits on the network.
    ///
    /// An invalid type is counted as failed and logged; an event sent after the sender has
    /// stopped is counted as dropped and logged. Neither is returned as an error, because
    /// the caller (a consultation ending) cannot do anything better with it.
    pub fn send(&self, event_type: &str, occurred_at_ms: u64, data: serde_json::Value) {
        let Some(shared) = &self.inner else {
            return;
        };
        let event = match Event::new(event_type, occurred_at_ms, data) {
            Ok(event) => event,
            Err(e) => {
                shared.metrics.failed.inc();
                warn!(event_type = ?event_type, error = %e, "webhook event refused");
                return;
            }
        };
        {
            let mut state = shared.lock();
            if state.closed {
                shared.metrics.dropped.inc();
                warn!(event_type, "webhook sender has stopped; event dropped");
                return;
            }
            state.queue.enqueue(Instant::now().into_std(), event);
        }
        shared.wake.notify_one();
    }

    /// Wait until the sending task has finished its shutdown flush (at most about
    /// [`FLUSH_TIMEOUT`] after the shutdown signal). Returns at once when disabled.
    pub async fn stopped(&self) {
        let Some(shared) = &self.inner else {
            return;
        };
        let mut rx = shared.stopped.subscribe();
        // The sender lives in `shared`, which we hold, so this cannot fail.
        let _ = rx.wait_for(|&stopped| stopped).await;
    }
}

struct Shared {
    state: Mutex<State>,
    /// Rings when an event is enqueued; `Notify` keeps a permit if the task is busy, so no
    /// wake-up is lost.
    wake: Notify,
    stopped: watch::Sender<bool>,
    metrics: WebhookMetrics,
}

struct State {
    queue: WebhookQueue,
    /// Set when the task has stopped: later events are counted as dropped.
    closed: bool,
}

impl Shared {
    /// The core holds no invariants a panic elsewhere could break mid-way, so a poisoned lock
    /// is still usable; losing every later event would be worse.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the sender stopped however the task ends (including a panic), so `send` counts
/// instead of queueing into the void and `stopped()` does not hang.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.stopped.send_replace(true);
    }
}

struct Driver {
    shared: Arc<Shared>,
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Arc<[u8]>,
}

impl Driver {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let _guard = StopGuard(self.shared.clone());
        let mut requests: JoinSet<(DeliveryId, Outcome)> = JoinSet::new();
        // A request task that panicked reports no id; this finds it by task id.
        let mut request_ids: HashMap<tokio::task::Id, DeliveryId> = HashMap::new();
        let mut flush_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let next = {
                let mut state = self.shared.lock();
                if let Some(deadline) = flush_deadline {
                    if state.queue.is_empty() {
                        info!("webhooks flushed");
                        state.closed = true;
                        break;
                    }
                    if now >= deadline {
                        let lost = state.queue.abandon();
                        warn!(lost, "webhook flush timed out; undelivered events dropped");
                        state.closed = true;
                        break;
                    }
                }
                while let Some(delivery) = state.queue.poll_transmit(now.into_std()) {
                    let id = delivery.id;
                    let handle = requests.spawn(attempt(
                        self.client.clone(),
                        self.url.clone(),
                        self.secret.clone(),
                        delivery,
                    ));
                    request_ids.insert(handle.id(), id);
                }
                state.queue.poll_timeout().map(Instant::from_std)
            };
            let wake_at = match (next, flush_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = shutdown.wait_for(|&stop| stop), if flush_deadline.is_none() => {
                    // Also taken when the shutdown sender is dropped: the server is going away.
                    flush_deadline = Some(now + FLUSH_TIMEOUT);
                    let mut state = self.shared.lock();
                    info!(pending = state.queue.len(), "webhooks flushing before shutdown");
                    state.queue.expedite(now.into_std());
                }
                Some(joined) = requests.join_next_with_id() => {
                    let (id, outcome) = match joined {
                        Ok((task, result)) => {
                            request_ids.remove(&task);
                            result
                        }
                        Err(e) => {
                            warn!(error = %e, "webhook request task failed");
                            let Some(id) = request_ids.remove(&e.id()) else { continue };
                            (id, Outcome::Transport)
                        }
                    };
                    self.shared.lock().queue.on_result(Instant::now().into_std(), id, outcome);
                }
                _ = self.shared.wake.notified() => {}
                _ = sleep_until(wake_at) => {}
            }
        }
        // Anything still running was counted as dropped by `abandon`.
        requests.abort_all();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One POST, signed with the wall-clock time of this attempt.
async fn attempt(
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Arc<[u8]>,
    delivery: Delivery,
) -> (DeliveryId, Outcome) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut request = client.post(url).body(delivery.body.clone());
    for (name, value) in delivery.signed_headers(&secret, timestamp) {
        request = request.header(name, value);
    }
    let outcome = match request.send().await {
        Ok(response) => Outcome::Response {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        Err(e) if e.is_timeout() => Outcome::Timeout,
        Err(e) => {
            // Without the URL: it may carry a token in its query.
            debug!(
                event_id = %delivery.event_id, attempt = delivery.attempt,
                error = %e.without_url(), "webhook request failed"
            );
            Outcome::Transport
        }
    };
    (delivery.id, outcome)
}
