//! The sans-IO webhook core: a bounded queue of events and their retry schedule.
//!
//! Everything that decides *whether* and *when* to send lives here, with time passed in, so
//! the backoff schedule, the retry/give-up rules and the overflow policy are tested in virtual
//! time without sockets. The async edge ([`super::sender`]) only performs the POSTs this core
//! hands out and reports how each one went:
//!
//! ```text
//! enqueue(now, event) ──▶ waiting ──poll_transmit(now)──▶ in flight ──on_result(now, id, outcome)
//!                            ▲                                         │
//!                            └────────── retry at now + backoff ◀──────┘  (or delivered / failed)
//! ```
//!
//! The edge sleeps until [`WebhookQueue::poll_timeout`] and wakes early when an event is
//! enqueued or a result arrives.
//!
//! Order between events is not preserved (a retried event is overtaken by newer ones); the
//! receiver orders by `occurred_at_ms` and de-duplicates on `id`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::{
    sign, WebhookError, WebhookMetrics, HEADER_DELIVERY, HEADER_EVENT, HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
};

/// How often and how patiently an event is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Nominal wait before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    /// Cap on one wait, including an honoured `Retry-After`.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 = the first retry), for `jitter` in `0.0..=1.0`.
    ///
    /// The nominal wait is `initial_backoff * 2^(retry-1)`, capped at `max_backoff`; the actual
    /// wait is between half of it and all of it ("equal jitter"). Jitter spreads out the
    /// retries of many events that failed together (the receiver was down), so a recovering
    /// receiver is not hit by all of them in the same instant; keeping the lower half fixed
    /// guarantees the backoff still grows.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let nominal = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let half = nominal / 2;
        half + (nominal - half).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// One business event to report, before it has a delivery id.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    event_type: Arc<str>,
    occurred_at_ms: u64,
    data: serde_json::Value,
}

impl Event {
    /// An event of `event_type` (see [`super::event_type`]) that happened at `occurred_at_ms`
    /// (unix milliseconds), with a type-specific `data` object.
    ///
    /// The type travels in a header, so it is limited to 1-64 characters of `a-z 0-9 . _ -`;
    /// checking here keeps a bad type from failing every attempt later.
    pub fn new(
        event_type: &str,
        occurred_at_ms: u64,
        data: serde_json::Value,
    ) -> Result<Event, WebhookError> {
        let valid = !event_type.is_empty()
            && event_type.len() <= 64
            && event_type
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
        if !valid {
            return Err(WebhookError::InvalidEventType);
        }
        Ok(Event {
            event_type: event_type.into(),
            occurred_at_ms,
            data,
        })
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
}

/// The JSON body, in the documented field order.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    occurred_at_ms: u64,
    data: &'a serde_json::Value,
}

/// The core's handle on one queued event, for [`WebhookQueue::on_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

/// One attempt to send, handed to the edge by [`WebhookQueue::poll_transmit`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Report the result under this id.
    pub id: DeliveryId,
    /// The wire id (`id` in the body, `X-Huizhen-Delivery`), the same on every attempt.
    pub event_id: Arc<str>,
    /// The event type (`type` in the body, `X-Huizhen-Event`).
    pub event_type: Arc<str>,
    /// The JSON body, the same bytes on every attempt.
    pub body: Bytes,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
}

impl Delivery {
    /// All request headers for this attempt, signed at `timestamp` (unix seconds).
    ///
    /// The edge takes the timestamp from the wall clock just before sending, so each retry
    /// carries a fresh one.
    pub fn signed_headers(&self, secret: &[u8], timestamp: u64) -> [(&'static str, String); 5] {
        [
            ("Content-Type", "application/json".to_owned()),
            (HEADER_EVENT, self.event_type.to_string()),
            (HEADER_DELIVERY, self.event_id.to_string()),
            (HEADER_TIMESTAMP, timestamp.to_string()),
            (HEADER_SIGNATURE, sign(secret, timestamp, &self.body)),
        ]
    }
}

/// How one attempt went, as the edge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with an HTTP status.
    Response {
        /// The status code.
        status: u16,
        /// The `Retry-After` header, when present and in seconds.
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout.
    Timeout,
    /// Connection refused or reset, DNS or TLS failure: the request may not have arrived.
    Transport,
}

impl Outcome {
    /// A response without `Retry-After`.
    pub fn status(status: u16) -> Outcome {
        Outcome::Response {
            status,
            retry_after: None,
        }
    }

    /// `None` when delivered, otherwise whether trying again can help.
    ///
    /// 408 and 429 are the receiver saying "not now"; 5xx, timeouts and transport errors are
    /// transient by nature. Any other status (4xx, and 3xx since redirects are not followed)
    /// means the request itself is unacceptable, and repeating it would fail the same way.
    fn retryable(&self) -> Option<bool> {
        match *self {
            Outcome::Response { status, .. } if (200..300).contains(&status) => None,
            Outcome::Response { status, .. } => {
                Some(status == 408 || status == 429 || (500..600).contains(&status))
            }
            Outcome::Timeout | Outcome::Transport => Some(true),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match *self {
            Outcome::Response { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// A short, bounded description for logs.
    fn describe(&self) -> String {
        match self {
            Outcome::Response { status, .. } => format!("HTTP {status}"),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Transport => "connection error".to_owned(),
        }
    }
}

/// What [`WebhookQueue::on_result`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Accepted by the receiver; forgotten.
    Delivered,
    /// Will be offered again by `poll_transmit` at `at`.
    Retry {
        /// When the next attempt becomes due.
        at: Instant,
    },
    /// Refused for good (a non-retryable status); counted as failed and forgotten.
    Rejected,
    /// The last allowed attempt failed; counted as failed and forgotten.
    Exhausted,
}

#[derive(Debug)]
struct Entry {
    event_id: Arc<str>,
    event_type: Arc<str>,
    body: Bytes,
    enqueued_at: Instant,
    attempts: u32,
    /// `Some(due)` while waiting, `None` while in flight.
    due: Option<Instant>,
}

/// The bounded queue and retry schedule. See the module docs.
pub struct WebhookQueue {
    policy: RetryPolicy,
    capacity: usize,
    max_in_flight: usize,
    /// By sequence number, which is also age: the first entry is the oldest.
    entries: BTreeMap<u64, Entry>,
    /// Waiting entries by due time (then age, so equal deadlines go out first-in first-out).
    waiting: BTreeSet<(Instant, u64)>,
    /// Requests the edge is performing, including those of orphans.
    in_flight: usize,
    /// In-flight entries evicted or abandoned: their results are awaited only to free the
    /// in-flight slot, since their fate was already counted.
    orphans: HashSet<u64>,
    next_seq: u64,
    /// Random per queue, so wire ids from different processes (restarts) do not collide while
    /// ids within one process are unique by construction.
    id_prefix: u64,
    rng: StdRng,
    metrics: WebhookMetrics,
}

impl WebhookQueue {
    /// An empty queue holding at most `capacity` events (at least 1), handing out at most
    /// `max_in_flight` (at least 1) attempts at a time. `seed` drives the wire-id prefix and
    /// the jitter: fixed in tests, random in production.
    pub fn new(
        policy: RetryPolicy,
        capacity: usize,
        max_in_flight: usize,
        metrics: WebhookMetrics,
        seed: u64,
    ) -> WebhookQueue {
        let mut rng = StdRng::seed_from_u64(seed);
        metrics.queue_depth.set(0);
        WebhookQueue {
            policy,
            capacity: capacity.max(1),
            max_in_flight: max_in_flight.max(1),
            entries: BTreeMap::new(),
            waiting: BTreeSet::new(),
            in_flight: 0,
            orphans: HashSet::new(),
            next_seq: 0,
            id_prefix: rng.random(),
            rng,
            metrics,
        }
    }

    /// Queue `event` for sending as soon as an in-flight slot is free. When the queue is full
    /// the oldest waiting event is dropped (counted and logged) to make room: the newest
    /// events describe the current state and are the most useful to the receiver.
    pub fn enqueue(&mut self, now: Instant, event: Event) -> DeliveryId {
        while self.entries.len() >= self.capacity {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let event_id: Arc<str> = format!("{:016x}{:016x}", self.id_prefix, seq).into();
        let body = serde_json::to_vec(&Body {
            id: &event_id,
            event_type: &event.event_type,
            occurred_at_ms: event.occurred_at_ms,
            data: &event.data,
        })
        .expect("a JSON value always serializes");
        debug!(event_id = %event_id, event_type = %event.event_type, "webhook queued");
        self.entries.insert(
            seq,
            Entry {
                event_id,
                event_type: event.event_type,
                body: Bytes::from(body),
                enqueued_at: now,
                attempts: 0,
                due: Some(now),
            },
        );
        self.waiting.insert((now, seq));
        self.update_depth();
        DeliveryId(seq)
    }

    /// The next attempt to perform, if one is due at `now` and an in-flight slot is free.
    /// Call repeatedly until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Delivery> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        let &(due, seq) = self.waiting.first()?;
        if due > now {
            return None;
        }
        self.waiting.pop_first();
        let entry = self.entries.get_mut(&seq).expect("waiting entries exist");
        entry.due = None;
        entry.attempts += 1;
        self.in_flight += 1;
        Some(Delivery {
            id: DeliveryId(seq),
            event_id: entry.event_id.clone(),
            event_type: entry.event_type.clone(),
            body: entry.body.clone(),
            attempt: entry.attempts,
        })
    }

    /// Record how the attempt `id` went. Returns `None` for an id that is not in flight
    /// (already resolved, evicted, or never handed out).
    pub fn on_result(
        &mut self,
        now: Instant,
        id: DeliveryId,
        outcome: Outcome,
    ) -> Option<Resolution> {
        if self.orphans.remove(&id.0) {
            self.in_flight -= 1;
            return None;
        }
        let Some(entry) = self.entries.get(&id.0).filter(|e| e.due.is_none()) else {
            debug!(?id, "webhook result for an unknown delivery ignored");
            return None;
        };
        self.in_flight -= 1;
        let attempts = entry.attempts;
        let resolution = match outcome.retryable() {
            None => {
                let entry = self.entries.remove(&id.0).expect("checked above");
                let latency = now.saturating_duration_since(entry.enqueued_at);
                self.metrics.delivered.inc();
                self.metrics.delivery_latency.observe(latency.as_secs_f64());
                debug!(
                    event_id = %entry.event_id, event_type = %entry.event_type, attempts,
                    latency_ms = latency.as_millis() as u64, "webhook delivered"
                );
                Resolution::Delivered
            }
            Some(false) => {
                let entry = self.entries.remove(&id.0).expect("checked above");
                self.metrics.failed.inc();
                warn!(
                    event_id = %entry.event_id, event_type = %entry.event_type, attempts,
                    result = %outcome.describe(),
                    "webhook rejected by the receiver; not retrying, event lost"
                );
                Resolution::Rejected
            }
            Some(true) if attempts >= self.policy.max_attempts => {
                let entry = self.entries.remove(&id.0).expect("checked above");
                self.metrics.failed.inc();
                warn!(
                    event_id = %entry.event_id, event_type = %entry.event_type, attempts,
                    result = %outcome.describe(),
                    "webhook failed on its last attempt; giving up, event lost"
                );
                Resolution::Exhausted
            }
            Some(true) => {
                let jitter: f64 = self.rng.random();
                let backoff = self.policy.backoff(attempts, jitter);
                let delay = outcome
                    .retry_after()
                    .map_or(backoff, |ra| ra.max(backoff))
                    .min(self.policy.max_backoff);
                let at = now + delay;
                let entry = self.entries.get_mut(&id.0).expect("checked above");
                entry.due = Some(at);
                self.waiting.insert((at, id.0));
                self.metrics.retried.inc();
                info!(
                    event_id = %entry.event_id, event_type = %entry.event_type, attempts,
                    result = %outcome.describe(), retry_in_ms = delay.as_millis() as u64,
                    "webhook attempt failed; will retry"
                );
                Resolution::Retry { at }
            }
        };
        self.update_depth();
        Some(resolution)
    }

    /// When `poll_transmit` will next have something, if anything. `None` while every
    /// in-flight slot is taken (a result, not time, frees one) or nothing is waiting.
    /// May be in the past: then poll now.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        self.waiting.first().map(|&(due, _)| due)
    }

    /// Make every waiting event due at `now`: on shutdown, one more attempt beats waiting out
    /// a backoff that would end after the process.
    pub fn expedite(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting);
        for (due, seq) in waiting {
            let due = due.min(now);
            self.entries
                .get_mut(&seq)
                .expect("waiting entries exist")
                .due = Some(due);
            self.waiting.insert((due, seq));
        }
    }

    /// Give up on everything still queued or in flight (shutdown deadline passed), counting
    /// each event as dropped and logging its id so it can be reconciled. Returns how many.
    pub fn abandon(&mut self) -> usize {
        let entries = std::mem::take(&mut self.entries);
        self.waiting.clear();
        let count = entries.len();
        for (seq, entry) in entries {
            if entry.due.is_none() {
                self.orphans.insert(seq);
            }
            self.metrics.dropped.inc();
            warn!(
                event_id = %entry.event_id, event_type = %entry.event_type,
                attempts = entry.attempts, "webhook not delivered before shutdown; event dropped"
            );
        }
        self.update_depth();
        count
    }

    /// Events waiting or in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Attempts handed out and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The metrics this core updates.
    pub fn metrics(&self) -> &WebhookMetrics {
        &self.metrics
    }

    /// Drop the oldest waiting event; if every event is in flight (capacity no larger than
    /// the in-flight limit), orphan the oldest in-flight one instead.
    fn evict_oldest(&mut self) {
        let seq = self
            .entries
            .iter()
            .find(|(_, e)| e.due.is_some())
            .or_else(|| self.entries.iter().next())
            .map(|(&seq, _)| seq)
            .expect("evicting from a non-empty queue");
        let entry = self.entries.remove(&seq).expect("just found");
        match entry.due {
            Some(due) => {
                self.waiting.remove(&(due, seq));
            }
            None => {
                self.orphans.insert(seq);
            }
        }
        self.metrics.dropped.inc();
        warn!(
            event_id = %entry.event_id, event_type = %entry.event_type,
            attempts = entry.attempts, capacity = self.capacity,
            "webhook queue full; dropped the oldest event"
        );
        self.update_depth();
    }

    fn update_depth(&self) {
        self.metrics.queue_depth.set(self.entries.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{event_type, verify_signature};
    use serde_json::json;

    const SEC: Duration = Duration::from_secs(1);

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: SEC,
            max_backoff: 8 * SEC,
        }
    }

    fn queue(max_attempts: u32, capacity: usize, max_in_flight: usize) -> WebhookQueue {
        WebhookQueue::new(
            policy(max_attempts),
            capacity,
            max_in_flight,
            WebhookMetrics::unregistered(),
            7,
        )
    }

    fn event(n: u64) -> Event {
        Event::new(
            event_type::CONSULTATION_STARTED,
            1_700_000_000_000 + n,
            json!({"n": n}),
        )
        .unwrap()
    }

    fn n_of(d: &Delivery) -> u64 {
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        body["data"]["n"].as_u64().unwrap()
    }

    /// Counters as (delivered, retried, failed, dropped).
    fn counts(q: &WebhookQueue) -> (u64, u64, u64, u64) {
        let m = q.metrics();
        (
            m.delivered.get(),
            m.retried.get(),
            m.failed.get(),
            m.dropped.get(),
        )
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitters_within_the_upper_half() {
        let p = policy(8);
        assert_eq!(p.backoff(1, 1.0), SEC);
        assert_eq!(p.backoff(1, 0.0), SEC / 2);
        assert_eq!(p.backoff(2, 1.0), 2 * SEC);
        assert_eq!(p.backoff(3, 0.5), 3 * SEC);
        assert_eq!(p.backoff(4, 1.0), 8 * SEC);
        assert_eq!(p.backoff(5, 1.0), 8 * SEC, "capped");
        assert_eq!(p.backoff(1_000, 1.0), 8 * SEC, "no overflow");
        assert_eq!(p.backoff(1, 7.0), SEC, "jitter clamped");
    }

    #[test]
    fn retry_schedule_in_virtual_time() {
        let mut q = queue(6, 10, 1);
        let t0 = Instant::now();
        let mut now = t0;
        q.enqueue(now, event(1));
        let mut waits = Vec::new();
        for attempt in 1..=5u32 {
            let d = q.poll_transmit(now).expect("due");
            assert_eq!(d.attempt, attempt);
            assert!(q.poll_transmit(now).is_none(), "one in flight");
            let Some(Resolution::Retry { at }) = q.on_result(now, d.id, Outcome::status(503))
            else {
                panic!("should retry");
            };
            assert_eq!(q.poll_timeout(), Some(at));
            assert!(
                q.poll_transmit(at - Duration::from_millis(1)).is_none(),
                "not early"
            );
            waits.push(at - now);
            now = at;
        }
        let nominal = [1, 2, 4, 8, 8].map(|s| s * SEC);
        for (wait, nominal) in waits.iter().zip(nominal) {
            assert!(*wait >= nominal / 2 && *wait <= nominal, "{waits:?}");
        }
        let d = q.poll_transmit(now).unwrap();
        assert_eq!(d.attempt, 6);
        assert_eq!(
            q.on_result(now, d.id, Outcome::status(200)),
            Some(Resolution::Delivered)
        );
        assert_eq!(counts(&q), (1, 5, 0, 0));
        assert!(q.is_empty());
        assert_eq!(q.poll_timeout(), None);
        assert_eq!(q.metrics().queue_depth.get(), 0);
        let latency = q.metrics().delivery_latency.get_sample_sum();
        assert!(
            (latency - (now - t0).as_secs_f64()).abs() < 1e-6,
            "latency from enqueue"
        );
    }

    #[test]
    fn same_seed_same_schedule() {
        let schedule = |seed| {
            let mut q = WebhookQueue::new(policy(5), 10, 1, WebhookMetrics::unregistered(), seed);
            let t0 = Instant::now();
            let mut now = t0;
            q.enqueue(now, event(1));
            let mut out = Vec::new();
            while let Some(d) = q.poll_transmit(now) {
                if let Some(Resolution::Retry { at }) = q.on_result(now, d.id, Outcome::Timeout) {
                    out.push(at - t0);
                    now = at;
                }
            }
            out
        };
        assert_eq!(schedule(1), schedule(1));
        assert_ne!(schedule(1), schedule(2));
    }

    #[test]
    fn permanent_and_retryable_outcomes() {
        let now = Instant::now();
        for (outcome, retry) in [
            (Outcome::status(400), false),
            (Outcome::status(401), false),
            (Outcome::status(404), false),
            (Outcome::status(410), false),
            (Outcome::status(301), false),
            (Outcome::status(408), true),
            (Outcome::status(429), true),
            (Outcome::status(500), true),
            (Outcome::status(502), true),
            (Outcome::status(503), true),
            (Outcome::Timeout, true),
            (Outcome::Transport, true),
        ] {
            let mut q = queue(3, 10, 1);
            q.enqueue(now, event(1));
            let d = q.poll_transmit(now).unwrap();
            let r = q.on_result(now, d.id, outcome).unwrap();
            if retry {
                assert!(matches!(r, Resolution::Retry { .. }), "{outcome:?}");
                assert_eq!(counts(&q), (0, 1, 0, 0), "{outcome:?}");
                assert_eq!(q.len(), 1);
            } else {
                assert_eq!(r, Resolution::Rejected, "{outcome:?}");
                assert_eq!(counts(&q), (0, 0, 1, 0), "{outcome:?}");
                assert!(q.is_empty());
                assert!(q.poll_transmit(now + 3600 * SEC).is_none(), "never retried");
            }
        }
        for status in [200, 201, 204, 299] {
            let mut q = queue(3, 10, 1);
            q.enqueue(now, event(1));
            let d = q.poll_transmit(now).unwrap();
            assert_eq!(
                q.on_result(now, d.id, Outcome::status(status)),
                Some(Resolution::Delivered)
            );
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut q = queue(3, 10, 1);
        let mut now = Instant::now();
        q.enqueue(now, event(1));
        let mut attempts = 0;
        loop {
            let d = q.poll_transmit(now).unwrap();
            attempts += 1;
            match q.on_result(now, d.id, Outcome::Transport).unwrap() {
                Resolution::Retry { at } => now = at,
                Resolution::Exhausted => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(attempts, 3);
        assert_eq!(counts(&q), (0, 2, 1, 0));
        assert!(q.is_empty());
        assert_eq!(q.poll_timeout(), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let now = Instant::now();
        let mut q = queue(5, 10, 1);
        q.enqueue(now, event(1));
        let d = q.poll_transmit(now).unwrap();
        let outcome = Outcome::Response {
            status: 429,
            retry_after: Some(5 * SEC),
        };
        assert_eq!(
            q.on_result(now, d.id, outcome),
            Some(Resolution::Retry { at: now + 5 * SEC })
        );
        let d = q.poll_transmit(now + 5 * SEC).unwrap();
        let outcome = Outcome::Response {
            status: 503,
            retry_after: Some(3600 * SEC),
        };
        let later = now + 5 * SEC;
        assert_eq!(
            q.on_result(later, d.id, outcome),
            Some(Resolution::Retry {
                at: later + 8 * SEC
            })
        );
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let now = Instant::now();
        let mut q = queue(3, 2, 4);
        q.enqueue(now, event(1));
        q.enqueue(now, event(2));
        q.enqueue(now, event(3));
        assert_eq!(counts(&q), (0, 0, 0, 1));
        assert_eq!(q.len(), 2);
        assert_eq!(q.metrics().queue_depth.get(), 2);
        let sent: Vec<u64> = std::iter::from_fn(|| q.poll_transmit(now))
            .map(|d| n_of(&d))
            .collect();
        assert_eq!(sent, vec![2, 3]);
    }

    #[test]
    fn full_queue_prefers_dropping_a_waiting_event_over_one_in_flight() {
        let now = Instant::now();
        let mut q = queue(3, 2, 1);
        q.enqueue(now, event(1));
        let first = q.poll_transmit(now).unwrap();
        q.enqueue(now, event(2));
        q.enqueue(now, event(3)); // full: event 2 (waiting) goes, event 1 (in flight) stays
        assert_eq!(counts(&q), (0, 0, 0, 1));
        assert_eq!(
            q.on_result(now, first.id, Outcome::status(204)),
            Some(Resolution::Delivered)
        );
        assert_eq!(n_of(&q.poll_transmit(now).unwrap()), 3);
    }

    #[test]
    fn evicting_an_in_flight_event_keeps_the_slot_until_its_result() {
        let now = Instant::now();
        let mut q = queue(3, 1, 1);
        q.enqueue(now, event(1));
        let first = q.poll_transmit(now).unwrap();
        q.enqueue(now, event(2)); // capacity 1, all in flight: event 1 is orphaned
        assert_eq!(counts(&q), (0, 0, 0, 1));
        assert!(q.poll_transmit(now).is_none(), "slot still busy");
        assert_eq!(q.poll_timeout(), None);
        assert_eq!(q.on_result(now, first.id, Outcome::status(200)), None);
        assert_eq!(counts(&q), (0, 0, 0, 1), "not also counted delivered");
        assert_eq!(n_of(&q.poll_transmit(now).unwrap()), 2);
    }

    #[test]
    fn in_flight_limit_and_stray_results() {
        let now = Instant::now();
        let mut q = queue(3, 10, 2);
        for n in 1..=3 {
            q.enqueue(now, event(n));
        }
        let a = q.poll_transmit(now).unwrap();
        let b = q.poll_transmit(now).unwrap();
        assert!(q.poll_transmit(now).is_none());
        assert_eq!(q.poll_timeout(), None, "a result, not time, frees a slot");
        assert_eq!(
            (n_of(&a), n_of(&b)),
            (1, 2),
            "equal deadlines go out oldest first"
        );
        assert_eq!(
            q.on_result(now, a.id, Outcome::status(200)),
            Some(Resolution::Delivered)
        );
        assert_eq!(
            q.on_result(now, a.id, Outcome::status(200)),
            None,
            "duplicate"
        );
        assert_eq!(
            q.on_result(now, DeliveryId(99), Outcome::status(200)),
            None,
            "unknown"
        );
        assert_eq!(q.in_flight(), 1);
        assert_eq!(n_of(&q.poll_transmit(now).unwrap()), 3);
        assert_eq!(counts(&q), (1, 0, 0, 0));
    }

    #[test]
    fn body_and_id_are_stable_across_retries_and_unique_across_events() {
        let now = Instant::now();
        let mut q = queue(3, 10, 2);
        q.enqueue(now, event(1));
        q.enqueue(now, event(2));
        let a = q.poll_transmit(now).unwrap();
        let b = q.poll_transmit(now).unwrap();
        assert_ne!(a.event_id, b.event_id);
        let Some(Resolution::Retry { at }) = q.on_result(now, a.id, Outcome::status(500)) else {
            panic!()
        };
        let a2 = q.poll_transmit(at).unwrap();
        assert_eq!(
            (a2.event_id.clone(), a2.body.clone(), a2.attempt),
            (a.event_id.clone(), a.body.clone(), 2)
        );

        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            body,
            json!({
                "id": &*a.event_id,
                "type": "consultation.started",
                "occurred_at_ms": 1_700_000_000_001u64,
                "data": {"n": 1},
            })
        );
        assert!(std::str::from_utf8(&a.body)
            .unwrap()
            .starts_with("{\"id\":"));
    }

    #[test]
    fn signed_headers_verify() {
        let now = Instant::now();
        let mut q = queue(3, 10, 1);
        q.enqueue(now, event(1));
        let d = q.poll_transmit(now).unwrap();
        let headers = d.signed_headers(b"0123456789abcdef", 1_700_000_000);
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(get("Content-Type"), "application/json");
        assert_eq!(get(HEADER_EVENT), "consultation.started");
        assert_eq!(get(HEADER_DELIVERY), &*d.event_id);
        assert_eq!(get(HEADER_TIMESTAMP), "1700000000");
        assert!(verify_signature(
            b"0123456789abcdef",
            1_700_000_000,
            &d.body,
            &get(HEADER_SIGNATURE)
        ));
    }

    #[test]
    fn expedite_then_abandon_on_shutdown() {
        let now = Instant::now();
        let mut q = queue(5, 10, 1);
        q.enqueue(now, event(1));
        q.enqueue(now, event(2));
        let d = q.poll_transmit(now).unwrap();
        let Some(Resolution::Retry { at }) = q.on_result(now, d.id, Outcome::Timeout) else {
            panic!()
        };
        assert!(at > now);
        let in_flight = q.poll_transmit(now).unwrap(); // event 2
        q.expedite(now);
        assert_eq!(
            q.on_result(now, in_flight.id, Outcome::Timeout).map(|_| ()),
            Some(())
        );
        assert_eq!(q.poll_transmit(now).map(|d| n_of(&d)), Some(1), "expedited");
        assert_eq!(q.abandon(), 2);
        assert_eq!(counts(&q), (0, 2, 0, 2));
        assert!(q.is_empty());
        assert_eq!(q.metrics().queue_depth.get(), 0);
    }

    #[test]
    fn event_types_are_header_safe() {
        for ok in ["consultation.started", "recording.archived", "a", "x_y-z.0"] {
            Event::new(ok, 0, json!({})).unwrap();
        }
        for bad in [
            "",
            "Consultation",
            "a b",
            "a\r\nX-Injected: 1",
            &"a".repeat(65),
        ] {
            assert!(Event::new(bad, 0, json!({})).is_err(), "{bad:?}");
        }
    }
}
