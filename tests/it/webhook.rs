//! Webhooks over real HTTP: a local axum receiver that verifies signatures the way the
//! hospital's system is told to, and answers with scripted statuses.
//!
//! Backoffs are configured in milliseconds and every wait is bounded, so the suite finishes in
//! a few seconds and cannot hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use huizhen::webhook::{
    event_type, verify_signature, WebhookConfig, WebhookHandle, Webhooks, HEADER_DELIVERY,
    HEADER_EVENT, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use prometheus::Registry;
use serde_json::{json, Value};
use tokio::sync::watch;

const SECRET: &str = "test-secret-0123456789";
const LIMIT: Duration = Duration::from_secs(10);

/// What the receiver answers to the n-th attempt (1-based) of one event.
#[derive(Clone, Copy)]
enum Script {
    /// 503 to the first `n` attempts, then 200.
    FailFirst(usize),
    /// 400 always.
    Reject,
    /// Stall the first attempt past the client's timeout, then 200.
    StallFirst(Duration),
}

#[derive(Default)]
struct Seen {
    /// Attempts per event id.
    attempts: HashMap<String, usize>,
    /// Bodies the receiver accepted (answered 2xx to).
    accepted: Vec<Value>,
    /// Requests whose signature, timestamp or headers did not check out.
    invalid: usize,
}

struct Receiver {
    script: Script,
    seen: Mutex<Seen>,
}

/// The verification recipe from the module docs.
async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let timestamp: u64 = header(HEADER_TIMESTAMP).parse().unwrap_or(0);
    let fresh = timestamp.abs_diff(now) <= 300;
    let signed = verify_signature(
        SECRET.as_bytes(),
        timestamp,
        &body,
        header(HEADER_SIGNATURE),
    );
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let consistent = header("content-type") == "application/json"
        && parsed["id"].as_str() == Some(header(HEADER_DELIVERY))
        && parsed["type"].as_str() == Some(header(HEADER_EVENT));
    if !(fresh && signed && consistent) {
        rx.seen.lock().unwrap().invalid += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let id = header(HEADER_DELIVERY).to_owned();
    let attempt = {
        let mut seen = rx.seen.lock().unwrap();
        let n = seen.attempts.entry(id).or_default();
        *n += 1;
        *n
    };
    let status = match rx.script {
        Script::FailFirst(n) if attempt <= n => StatusCode::SERVICE_UNAVAILABLE,
        Script::FailFirst(_) => StatusCode::OK,
        Script::Reject => return StatusCode::BAD_REQUEST,
        Script::StallFirst(stall) if attempt == 1 => {
            tokio::time::sleep(stall).await;
            return StatusCode::OK; // too late: the sender has given up on this attempt
        }
        Script::StallFirst(_) => StatusCode::OK,
    };
    if status.is_success() {
        rx.seen.lock().unwrap().accepted.push(parsed);
    }
    status
}

/// Start a receiver on 127.0.0.1:0; returns it and the URL to configure.
async fn start_receiver(script: Script) -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver {
        script,
        seen: Mutex::new(Seen::default()),
    });
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, url)
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: Some(url.to_owned()),
        secret: Some(SECRET.to_owned()),
        timeout_ms: 2_000,
        max_attempts: 5,
        initial_backoff_ms: 20,
        max_backoff_ms: 100,
        ..WebhookConfig::default()
    }
}

struct Sender {
    handle: WebhookHandle,
    registry: Registry,
    shutdown: watch::Sender<bool>,
}

fn start_sender(config: WebhookConfig) -> Sender {
    let registry = Registry::new_custom(Some("huizhen_webhook".into()), None).unwrap();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = Webhooks::spawn(config, &registry, shutdown_rx).unwrap();
    Sender {
        handle,
        registry,
        shutdown,
    }
}

impl Sender {
    /// `huizhen_webhook_deliveries_total{result}`.
    fn count(&self, result: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "huizhen_webhook_deliveries_total")
            .flat_map(|f| f.get_metric())
            .find(|m| m.get_label().iter().any(|l| l.value() == result))
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    fn gauge(&self, name: &str) -> i64 {
        self.registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map_or(-1, |f| f.get_metric()[0].get_gauge().get_value() as i64)
    }

    fn latency_samples(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .find(|f| f.name() == "huizhen_webhook_delivery_latency_seconds")
            .map_or(0, |f| f.get_metric()[0].get_histogram().get_sample_count())
    }

    /// Poll until `done`, failing the test after [`LIMIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&Sender) -> bool) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), self.handle.stopped())
            .await
            .expect("sender stops within the flush timeout");
    }
}

#[tokio::test]
async fn retries_after_503_then_delivers_exactly_once_signed() {
    let (rx, url) = start_receiver(Script::FailFirst(2)).await;
    let s = start_sender(config(&url));
    s.handle.send(
        event_type::CONSULTATION_STARTED,
        1_732_291_200_123,
        json!({"consultation_id": "c-42"}),
    );
    s.wait_for("delivery", |s| s.count("delivered") == 1).await;
    // Give a stray duplicate time to show up before asserting it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;

    {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.invalid, 0, "every attempt was correctly signed");
        assert_eq!(seen.accepted.len(), 1, "accepted exactly once");
        let body = &seen.accepted[0];
        assert_eq!(body["type"], "consultation.started");
        assert_eq!(body["occurred_at_ms"], 1_732_291_200_123u64);
        assert_eq!(body["data"], json!({"consultation_id": "c-42"}));
        let id = body["id"].as_str().unwrap();
        assert_eq!(
            seen.attempts.get(id),
            Some(&3),
            "two 503s, then success, same id throughout"
        );
    }

    assert_eq!(s.count("retried"), 2);
    assert_eq!(s.count("failed"), 0);
    assert_eq!(s.count("dropped"), 0);
    assert_eq!(s.gauge("huizhen_webhook_queue_depth"), 0);
    assert_eq!(s.latency_samples(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_400_is_counted_as_failed_and_not_retried() {
    let (rx, url) = start_receiver(Script::Reject).await;
    let s = start_sender(config(&url));
    s.handle.send(event_type::CONSULTATION_ENDED, 1, json!({}));
    s.wait_for("failure", |s| s.count("failed") == 1).await;
    // Many backoff periods (at most 100 ms each) pass without another attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;

    {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.invalid, 0);
        assert_eq!(seen.attempts.values().copied().collect::<Vec<_>>(), vec![1]);
        assert!(seen.accepted.is_empty());
    }
    assert_eq!(s.count("retried"), 0);
    assert_eq!(s.count("delivered"), 0);
    assert_eq!(s.gauge("huizhen_webhook_queue_depth"), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried() {
    let (rx, url) = start_receiver(Script::StallFirst(Duration::from_secs(2))).await;
    let s = start_sender(WebhookConfig {
        timeout_ms: 200,
        ..config(&url)
    });
    s.handle
        .send(event_type::CONSULTATION_STARTED, 1, json!({}));
    s.wait_for("delivery", |s| s.count("delivered") == 1).await;
    assert_eq!(s.count("retried"), 1);
    let attempts: Vec<usize> = rx.seen.lock().unwrap().attempts.values().copied().collect();
    assert_eq!(attempts, vec![2]);
    s.stop().await;
}

#[tokio::test]
async fn an_unreachable_receiver_exhausts_the_attempts() {
    // A port that was just free: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let s = start_sender(WebhookConfig {
        max_attempts: 3,
        ..config(&url)
    });
    s.handle
        .send(event_type::CONSULTATION_STARTED, 1, json!({}));
    s.wait_for("giving up", |s| s.count("failed") == 1).await;
    assert_eq!(s.count("retried"), 2);
    assert_eq!(s.count("delivered"), 0);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_queued_events_then_refuses_new_ones() {
    let (rx, url) = start_receiver(Script::FailFirst(0)).await;
    let s = start_sender(config(&url));
    for n in 0..3 {
        s.handle
            .send(event_type::CONSULTATION_ENDED, n, json!({"n": n}));
    }
    s.stop().await;
    assert_eq!(s.count("delivered"), 3, "flushed before stopping");
    assert_eq!(rx.seen.lock().unwrap().accepted.len(), 3);

    s.handle.send(event_type::CONSULTATION_ENDED, 9, json!({}));
    assert_eq!(
        s.count("dropped"),
        1,
        "an event after stop is counted, not lost silently"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_a_dead_receiver_within_the_flush_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let s = start_sender(WebhookConfig {
        initial_backoff_ms: 10_000,
        max_backoff_ms: 10_000,
        ..config(&url)
    });
    s.handle.send(event_type::CONSULTATION_ENDED, 1, json!({}));
    s.wait_for("first failure", |s| s.count("retried") == 1)
        .await;
    let started = std::time::Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.count("dropped"), 1, "the undelivered event is counted");
    assert_eq!(s.gauge("huizhen_webhook_queue_depth"), 0);
}

#[tokio::test]
async fn disabled_webhooks_send_nothing() {
    let s = start_sender(WebhookConfig::default());
    assert!(!s.handle.is_enabled());
    s.handle
        .send(event_type::CONSULTATION_STARTED, 1, json!({}));
    s.stop().await;
    for result in ["delivered", "retried", "failed", "dropped"] {
        assert_eq!(s.count(result), 0, "{result}");
    }
}

#[tokio::test]
async fn spawn_refuses_an_invalid_config() {
    let registry = Registry::new();
    let (_tx, rx) = watch::channel(false);
    let err = Webhooks::spawn(
        WebhookConfig {
            url: Some("http://his.example.org/hook".into()),
            secret: Some(SECRET.into()),
            ..WebhookConfig::default()
        },
        &registry,
        rx,
    )
    .unwrap_err();
    assert!(err.to_string().contains("webhook.url"), "{err}");
}
