//! The spool's sans-IO core: which object is uploaded next, and when a failed upload is
//! retried.
//!
//! No I/O and no clock: the async driver passes `now` in and performs what [`SpoolQueue::poll`]
//! asks for, so ordering and the backoff schedule are tested in virtual time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the spool waits before retrying a failed upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubles with each further consecutive failure.
    pub initial: Duration,
    /// Longest wait: how late, at worst, the spool notices that the store is back.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` consecutive failures (1 = the first): `initial * 2^(n-1)`,
    /// capped at `max`.
    ///
    /// No jitter: there is one uploader per spool and it sends one request at a time, so
    /// there is no herd of clients to spread out.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// What the uploader should do next, from [`SpoolQueue::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Upload the object with this sequence number (it is now in flight).
    Upload(u64),
    /// Backing off after a failure: poll again at this instant.
    WaitUntil(Instant),
    /// Nothing to do until something is enqueued (or an upload is already in flight).
    Idle,
}

/// The spool's ordering and retry state: which object goes next and when. No I/O, no
/// clock: time is passed in, so the schedule is tested in virtual time.
#[derive(Debug)]
pub struct SpoolQueue {
    policy: RetryPolicy,
    /// Sequence number → bytes on disk, in upload order.
    pending: BTreeMap<u64, u64>,
    bytes: u64,
    in_flight: Option<u64>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl SpoolQueue {
    /// An empty queue.
    pub fn new(policy: RetryPolicy) -> SpoolQueue {
        SpoolQueue {
            policy,
            pending: BTreeMap::new(),
            bytes: 0,
            in_flight: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// Add a spooled object. Sequence numbers decide the order, whatever order they are
    /// pushed in (a restart re-discovers files in directory order).
    pub fn push(&mut self, seq: u64, bytes: u64) {
        if let Some(old) = self.pending.insert(seq, bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    /// The next step at `now`. Returns [`Next::Upload`] for the oldest object when nothing is
    /// in flight and no backoff is running.
    pub fn poll(&mut self, now: Instant) -> Next {
        if self.in_flight.is_some() {
            return Next::Idle;
        }
        let Some((&seq, _)) = self.pending.first_key_value() else {
            return Next::Idle;
        };
        match self.retry_at {
            Some(at) if at > now => Next::WaitUntil(at),
            _ => {
                self.retry_at = None;
                self.in_flight = Some(seq);
                Next::Upload(seq)
            }
        }
    }

    /// The store has object `seq`: forget it, and the store is evidently up again.
    pub fn on_uploaded(&mut self, seq: u64) {
        self.remove(seq);
        self.failures = 0;
    }

    /// Uploading `seq` failed at `now`: it stays first in line and is retried after the
    /// returned backoff.
    pub fn on_failed(&mut self, now: Instant, seq: u64) -> Duration {
        if self.in_flight == Some(seq) {
            self.in_flight = None;
        }
        self.failures = self.failures.saturating_add(1);
        let wait = self.policy.backoff(self.failures);
        self.retry_at = Some(now + wait);
        wait
    }

    /// Object `seq` left the queue without being uploaded (set aside as rejected or corrupt,
    /// or its file vanished). The failure streak is kept: this says nothing about the store.
    pub fn on_set_aside(&mut self, seq: u64) {
        self.remove(seq);
    }

    fn remove(&mut self, seq: u64) {
        if let Some(bytes) = self.pending.remove(&seq) {
            self.bytes -= bytes;
        }
        if self.in_flight == Some(seq) {
            self.in_flight = None;
        }
    }

    /// Objects waiting or in flight.
    pub fn depth(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Their total size on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Consecutive failed uploads (0 once one succeeds).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the next retry is due, while backing off.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn uploads_in_sequence_order_whatever_the_push_order() {
        let mut q = SpoolQueue::new(RetryPolicy::default());
        let t0 = Instant::now();
        for seq in [3, 1, 2] {
            q.push(seq, 10 * seq);
        }
        assert_eq!((q.depth(), q.bytes()), (3, 60));
        let mut order = Vec::new();
        while let Next::Upload(seq) = q.poll(t0) {
            // Only one in flight at a time.
            assert_eq!(q.poll(t0), Next::Idle);
            order.push(seq);
            q.on_uploaded(seq);
        }
        assert_eq!(order, [1, 2, 3]);
        assert_eq!((q.depth(), q.bytes()), (0, 0));
        assert_eq!(q.poll(t0), Next::Idle);
    }

    #[test]
    fn a_failure_keeps_the_head_and_backs_off() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(250),
        };
        let mut q = SpoolQueue::new(p);
        let t0 = Instant::now();
        q.push(1, 1);
        q.push(2, 1);

        assert_eq!(q.poll(t0), Next::Upload(1));
        assert_eq!(q.on_failed(t0, 1), Duration::from_millis(100));
        assert_eq!(q.poll(t0), Next::WaitUntil(t0 + Duration::from_millis(100)));
        // A new object does not jump the queue or cut the wait short.
        q.push(3, 1);
        assert_eq!(
            q.poll(t0 + Duration::from_millis(99)),
            Next::WaitUntil(t0 + Duration::from_millis(100))
        );

        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(q.poll(t1), Next::Upload(1), "the same head is retried");
        assert_eq!(q.on_failed(t1, 1), Duration::from_millis(200));
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(q.poll(t2), Next::Upload(1));
        assert_eq!(q.on_failed(t2, 1), Duration::from_millis(250), "capped");
        assert_eq!(q.failures(), 3);

        let t3 = t2 + Duration::from_millis(250);
        assert_eq!(q.poll(t3), Next::Upload(1));
        q.on_uploaded(1);
        assert_eq!(q.failures(), 0);
        assert_eq!(
            q.poll(t3),
            Next::Upload(2),
            "no wait once the store is back"
        );
        q.on_set_aside(2);
        assert_eq!(q.poll(t3), Next::Upload(3));
        q.on_uploaded(3);
        assert_eq!(q.depth(), 0);
    }
}
