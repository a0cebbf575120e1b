//! Webhooks: telling the hospital's system what happened, reliably and verifiably.
//!
//! The clinic emits business events (a consultation started or ended, later a recording was
//! archived); the hospital's system learns about them only through these HTTP callbacks, so a
//! lost event is a consultation that is never billed or a record that is never filed. The
//! module therefore retries with backoff and never drops an event without counting and logging
//! it.
//!
//! It is split like the rest of huizhen:
//! - [`queue`] is the sans-IO core: a bounded queue plus retry schedule with time passed in
//!   (`enqueue(now, ..)`, `poll_transmit(now)`, `on_result(now, ..)`, `poll_timeout()`). All
//!   retry, backoff and capacity decisions live there and are tested in virtual time.
//! - [`sender`] is the thin async edge: one tokio task that sleeps until the core's next
//!   deadline and performs the HTTP POSTs it asks for (reqwest over rustls).
//!
//! # Wire format
//!
//! Each event is one `POST` to the configured URL with `Content-Type: application/json` and a
//! body like
//!
//! ```json
//! {"id":"5f0c…","type":"consultation.started","occurred_at_ms":1732291200123,"data":{…}}
//! ```
//!
//! `id` is unique per event and stays the same across retries, so a receiver that got the
//! event but whose answer was lost (timeout, 5xx after commit) can de-duplicate on it. Headers:
//!
//! | header | value |
//! | --- | --- |
//! | `X-Huizhen-Event` | the event type, as in the body |
//! | `X-Huizhen-Delivery` | the event id, as in the body |
//! | `X-Huizhen-Timestamp` | unix seconds when this attempt was sent |
//! | `X-Huizhen-Signature` | `sha256=` + lowercase hex of HMAC-SHA256(secret, `"<timestamp>.<body>"`) |
//!
//! The timestamp is re-taken and the body re-signed on every attempt, so a retry sent minutes
//! later still passes a receiver's freshness check.
//!
//! The server answers what happens next:
//! - `2xx`: delivered.
//! - `408`, `429`, `5xx`, a timeout or a connection/TLS error: retried with exponential backoff
//!   and jitter (honouring `Retry-After` up to `max_backoff_ms`) until `max_attempts`.
//! - any other status (`4xx`, and `3xx`: redirects are not followed, since a redirected POST
//!   would lose its body or land somewhere unsigned-for): a permanent failure, logged and
//!   counted, never retried — retrying a request the receiver has rejected cannot succeed.
//!
//! # Verifying a webhook (receiver side)
//!
//! 1. Read the raw body bytes *before* parsing JSON (re-serialising changes the bytes).
//! 2. Parse `X-Huizhen-Timestamp` as an integer and reject the request if it is more than a
//!    few minutes (we suggest 300 s) away from the receiver's clock: this bounds replays of a
//!    captured request.
//! 3. Compute HMAC-SHA256 with the shared secret over the timestamp digits, a `.`, and the raw
//!    body; hex-encode it and compare with the part of `X-Huizhen-Signature` after `sha256=`
//!    **in constant time** (e.g. `hmac.compare_digest` in Python, `crypto.timingSafeEqual` in
//!    Node, [`verify_signature`] in Rust). A plain `==` leaks, through timing, how many leading
//!    characters of a forged signature were right.
//! 4. De-duplicate on `X-Huizhen-Delivery` / `id`: delivery is at-least-once.
//! 5. Answer `2xx` quickly (process asynchronously if needed); answer `4xx` only for requests
//!    that will never be accepted, since those are not retried.

pub mod queue;
pub mod sender;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;

use crate::redact::Redacted;

pub use queue::{Delivery, DeliveryId, Event, Outcome, Resolution, RetryPolicy, WebhookQueue};
pub use sender::{WebhookHandle, Webhooks};

/// Event types huizhen emits. Receivers should ignore types they do not know, so new ones can
/// be added without breaking them.
pub mod event_type {
    /// A consultation began (the doctor admitted the patient).
    pub const CONSULTATION_STARTED: &str = "consultation.started";
    /// A consultation ended.
    pub const CONSULTATION_ENDED: &str = "consultation.ended";
    /// A consultation's recording was archived.
    pub const RECORDING_ARCHIVED: &str = "recording.archived";
}

/// Header carrying the event type.
pub const HEADER_EVENT: &str = "X-Huizhen-Event";
/// Header carrying the event id (stable across retries).
pub const HEADER_DELIVERY: &str = "X-Huizhen-Delivery";
/// Header carrying the unix time (seconds) at which this attempt was signed.
pub const HEADER_TIMESTAMP: &str = "X-Huizhen-Timestamp";
/// Header carrying `sha256=<hex HMAC>`.
pub const HEADER_SIGNATURE: &str = "X-Huizhen-Signature";

/// Shortest accepted secret: an HMAC key much shorter than this can be brute-forced offline
/// from a single captured request.
pub const MIN_SECRET_LEN: usize = 16;

/// Deliveries in flight at once. More than one, so one slow or timing-out request does not
/// hold up every other event; few, so a recovering receiver is not flooded.
pub const MAX_IN_FLIGHT: usize = 4;

/// Why the webhook component could not start, or an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Operator error: a configuration field is out of range or inconsistent.
    #[error("config field `{field}`: {message}")]
    Config {
        /// Dotted field name, e.g. `webhook.secret`.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Caller error: an event type that cannot be sent as a header value.
    #[error("invalid webhook event type (use 1-64 chars of a-z, 0-9, '.', '_', '-')")]
    InvalidEventType,
    /// Environment error: the HTTP client (TLS setup) could not be built.
    #[error("cannot build webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Programming error: the metrics are already registered in this registry.
    #[error("cannot register webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Programming error: [`Webhooks::spawn`] was called outside a tokio runtime.
    #[error("webhooks must be started inside a tokio runtime")]
    NoRuntime,
}

/// Webhook settings (the `[webhook]` section).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receiver URL; `None` disables webhooks. Must be `https://`, except for loopback hosts
    /// (`localhost`, `127.0.0.0/8`, `[::1]`) used in development and tests.
    pub url: Option<String>,
    /// Shared HMAC secret, at least [`MIN_SECRET_LEN`] bytes; required when `url` is set.
    pub secret: Option<String>,
    /// Per-attempt timeout (connect + request + response headers), in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per event, the first included, before it is counted as failed.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds; doubles per retry.
    pub initial_backoff_ms: u64,
    /// Upper bound on one backoff (and on an honoured `Retry-After`), in milliseconds.
    pub max_backoff_ms: u64,
    /// Events held (waiting or in flight) before the oldest is dropped to make room.
    pub queue_capacity: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: None,
            timeout_ms: 5_000,
            max_attempts: 8,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            queue_capacity: 10_000,
        }
    }
}

/// The secret must never reach a log line, even through `{config:?}` at start-up.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(Redacted))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl WebhookConfig {
    /// Whether a URL is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Check ranges and cross-field rules; errors name the `webhook.*` field.
    ///
    /// Numeric fields are checked even when webhooks are disabled, so a typo is caught the day
    /// it is written rather than the day webhooks are switched on.
    pub fn validate(&self) -> Result<(), WebhookError> {
        let invalid = |field: &'static str, message: &str| {
            Err(WebhookError::Config {
                field,
                message: message.to_owned(),
            })
        };
        if !(100..=120_000).contains(&self.timeout_ms) {
            return invalid("webhook.timeout_ms", "must be within 100..=120000");
        }
        if !(1..=100).contains(&self.max_attempts) {
            return invalid("webhook.max_attempts", "must be within 1..=100");
        }
        if !(1..=3_600_000).contains(&self.initial_backoff_ms) {
            return invalid("webhook.initial_backoff_ms", "must be within 1..=3600000");
        }
        if self.max_backoff_ms < self.initial_backoff_ms || self.max_backoff_ms > 86_400_000 {
            return invalid(
                "webhook.max_backoff_ms",
                "must be at least initial_backoff_ms and at most 86400000 (one day)",
            );
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return invalid("webhook.queue_capacity", "must be within 1..=1000000");
        }
        let Some(url) = &self.url else {
            return Ok(());
        };
        if let Err(message) = check_url(url) {
            return invalid("webhook.url", &message);
        }
        match &self.secret {
            None => invalid("webhook.secret", "required when webhook.url is set"),
            Some(s) if s.len() < MIN_SECRET_LEN => invalid(
                "webhook.secret",
                &format!("must be at least {MIN_SECRET_LEN} bytes (use a random string)"),
            ),
            Some(_) => Ok(()),
        }
    }

    /// The retry settings as the core wants them.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }

    /// Per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `https://` anywhere, `http://` only to this machine: event bodies identify consultations,
/// so they must not cross a network in clear text.
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    if parsed.host().is_none() {
        return Err("needs a host".to_owned());
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err("must use https:// (http:// is allowed only for localhost/loopback)".into()),
        other => Err(format!("unsupported scheme `{other}`; use https://")),
    }
}

/// Whether the URL's host is this machine.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed (`[::1]`).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Huizhen-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `sha256=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
///
/// The timestamp is inside the MAC so a captured request cannot be replayed with a fresh
/// timestamp header.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` is the signature of `body` at `timestamp`, compared in constant time.
///
/// This checks authenticity only: the caller must also reject timestamps outside its
/// freshness window (see the module docs).
pub fn verify_signature(secret: &[u8], timestamp: u64, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_sig) else {
        return false;
    };
    // `verify_slice` compares in constant time and rejects a tag of the wrong length.
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

/// The webhook metrics. Register them in the `huizhen_webhook`-prefixed registry (from
/// `Metrics::component("webhook")`), so the full names are `huizhen_webhook_deliveries_total`,
/// `huizhen_webhook_queue_depth` and `huizhen_webhook_delivery_latency_seconds`.
///
/// Labels are a fixed set of results: never event types, ids or URLs.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// Every attempt that succeeded.
    pub delivered: IntCounter,
    /// Every failed attempt that was scheduled for another try.
    pub retried: IntCounter,
    /// Events given up on: permanent rejection or attempts exhausted.
    pub failed: IntCounter,
    /// Events evicted unsent: queue full, or still queued at shutdown.
    pub dropped: IntCounter,
    /// Events waiting or in flight.
    pub queue_depth: IntGauge,
    /// From enqueue to the accepting 2xx, retries included.
    pub delivery_latency: Histogram,
}

impl WebhookMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn new(registry: &Registry) -> Result<WebhookMetrics, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "deliveries_total",
                "Webhook delivery results: delivered, retried (per failed attempt), \
                 failed (given up) and dropped (evicted unsent)",
            ),
            &["result"],
        )?;
        let queue_depth = IntGauge::new("queue_depth", "Webhook events waiting or in flight")?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Time from an event being queued to the receiver accepting it, retries included",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                600.0, 1800.0,
            ]),
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(delivery_latency.clone()))?;
        Ok(WebhookMetrics {
            delivered: deliveries.with_label_values(&["delivered"]),
            retried: deliveries.with_label_values(&["retried"]),
            failed: deliveries.with_label_values(&["failed"]),
            dropped: deliveries.with_label_values(&["dropped"]),
            queue_depth,
            delivery_latency,
        })
    }

    /// Metrics registered nowhere, for tests and tools.
    pub fn unregistered() -> WebhookMetrics {
        WebhookMetrics::new(&Registry::new()).expect("fresh registry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> WebhookConfig {
        WebhookConfig {
            url: Some("https://his.example.org/hooks/huizhen".into()),
            secret: Some("0123456789abcdef0123".into()),
            ..WebhookConfig::default()
        }
    }

    fn field_of(r: Result<(), WebhookError>) -> &'static str {
        match r {
            Err(WebhookError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_disabled_and_valid() {
        let c = WebhookConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
        enabled().validate().unwrap();
    }

    #[test]
    fn parses_from_toml_and_refuses_unknown_fields() {
        let c: WebhookConfig = toml::from_str(
            "url = \"https://his.example.org/h\"\nsecret = \"0123456789abcdef\"\nmax_attempts = 3",
        )
        .unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.timeout_ms, 5_000);
        c.validate().unwrap();
        assert!(toml::from_str::<WebhookConfig>("retries = 3").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = enabled();
        c.secret = None;
        assert_eq!(field_of(c.validate()), "webhook.secret");
        c.secret = Some("short".into());
        assert_eq!(field_of(c.validate()), "webhook.secret");

        let mut c = enabled();
        c.url = Some("http://his.example.org/h".into());
        assert_eq!(field_of(c.validate()), "webhook.url");
        c.url = Some("ftp://his.example.org/h".into());
        assert_eq!(field_of(c.validate()), "webhook.url");
        c.url = Some("not a url".into());
        assert_eq!(field_of(c.validate()), "webhook.url");

        let mut c = enabled();
        c.max_attempts = 0;
        assert_eq!(field_of(c.validate()), "webhook.max_attempts");
        let mut c = enabled();
        c.max_backoff_ms = c.initial_backoff_ms - 1;
        assert_eq!(field_of(c.validate()), "webhook.max_backoff_ms");
        let mut c = enabled();
        c.queue_capacity = 0;
        assert_eq!(field_of(c.validate()), "webhook.queue_capacity");
        let c = WebhookConfig {
            timeout_ms: 0,
            ..WebhookConfig::default()
        };
        assert_eq!(field_of(c.validate()), "webhook.timeout_ms");
    }

    #[test]
    fn http_is_allowed_only_for_loopback() {
        for url in [
            "http://127.0.0.1:9000/h",
            "http://localhost/h",
            "http://[::1]:80/h",
        ] {
            let c = WebhookConfig {
                url: Some(url.into()),
                ..enabled()
            };
            c.validate().unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://10.0.0.5/h",
            "http://localhost.evil.example/h",
            "http://[::2]/h",
        ] {
            let c = WebhookConfig {
                url: Some(url.into()),
                ..enabled()
            };
            assert_eq!(field_of(c.validate()), "webhook.url", "{url}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let shown = format!("{:?}", enabled());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'it is a secret!!'
        let sig = sign(b"it is a secret!!", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "sha256=df256d82f2dc95b02f203b2eeb91725a948236c5286e3db192cfe7734faa381a"
        );
    }

    #[test]
    fn verify_accepts_only_the_exact_signature() {
        let secret = b"0123456789abcdef";
        let body = br#"{"id":"x","type":"consultation.started"}"#;
        let sig = sign(secret, 42, body);
        assert!(verify_signature(secret, 42, body, &sig));
        assert!(
            !verify_signature(secret, 43, body, &sig),
            "timestamp is signed"
        );
        assert!(
            !verify_signature(b"0123456789abcdeX", 42, body, &sig),
            "wrong secret"
        );
        assert!(!verify_signature(secret, 42, b"{}", &sig), "body is signed");
        assert!(
            !verify_signature(secret, 42, body, &sig[7..]),
            "prefix required"
        );
        assert!(!verify_signature(secret, 42, body, &sig[..40]), "truncated");
        assert!(!verify_signature(secret, 42, body, "sha256=zz"), "not hex");
        assert!(!verify_signature(secret, 42, body, ""), "empty");
    }

    #[test]
    fn metrics_use_only_bounded_labels_and_refuse_double_registration() {
        let registry = Registry::new_custom(Some("huizhen_webhook".into()), None).unwrap();
        let m = WebhookMetrics::new(&registry).unwrap();
        m.delivered.inc();
        let names: Vec<_> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"huizhen_webhook_deliveries_total".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"huizhen_webhook_queue_depth".to_owned()));
        assert!(names.contains(&"huizhen_webhook_delivery_latency_seconds".to_owned()));
        assert!(WebhookMetrics::new(&registry).is_err());
    }
}
