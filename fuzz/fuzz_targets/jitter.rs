#![no_main]
//! The recorder's reorder buffer (`recorder::jitter::JitterBuffer`) under any arrival
//! pattern: packets come out in strictly increasing order, gaps are reported as exactly the
//! sequence numbers skipped, and it holds at most its limit after being polled.

use std::time::{Duration, Instant};

use huizhen::recorder::jitter::{JitterBuffer, Pushed, Released};
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut r = common::Reader(data);
    let max_packets = usize::from(r.u8() % 64) + 1;
    let max_delay = Duration::from_millis(u64::from(r.u16() % 5001));
    let t0 = Instant::now();
    let mut now = t0;
    let mut buf: JitterBuffer<u64> = JitterBuffer::new(max_packets, max_delay);
    let mut base = u64::from(r.u32());
    // The next sequence number out, once something came out.
    let mut next: Option<u64> = None;
    let check = |released: Released<u64>, next: &mut Option<u64>| match released {
        Released::Packet(seq) => {
            if let Some(n) = *next {
                assert_eq!(seq, n, "out of order");
            }
            *next = Some(seq + 1);
        }
        Released::Lost(n) => {
            assert!(n > 0);
            let expected = next.expect("a gap only after a first packet");
            *next = Some(expected + n);
        }
    };
    while !r.is_empty() {
        match r.u8() % 6 {
            0 | 1 => {
                // Near the base (reordering, duplicates) or anywhere (a jump).
                let seq = if r.u8() & 0x80 == 0 {
                    base.saturating_add(u64::from(r.u8()))
                } else {
                    r.u64() >> 8
                };
                let pushed = buf.push(now, seq, seq);
                if pushed == Pushed::Late {
                    assert!(next.is_some_and(|n| seq < n));
                }
                base = base.max(seq);
            }
            2 => now += Duration::from_millis(u64::from(r.u16())),
            3 => {
                while let Some(released) = buf.pop(now) {
                    check(released, &mut next);
                }
                assert!(buf.len() <= max_packets);
                // Whatever is still held is not due yet.
                if let Some(deadline) = buf.deadline() {
                    assert!(deadline > now, "held past its deadline");
                }
            }
            4 => {
                while let Some(released) = buf.drain() {
                    check(released, &mut next);
                }
                assert!(buf.is_empty());
            }
            _ => {
                while buf.drain().is_some() {}
                buf.reset();
                next = None;
            }
        }
    }
    let stats = buf.stats();
    assert!(stats.duplicates + stats.late <= stats.received);
});
