#![no_main]
//! ICE-TCP framing (RFC 4571): a TCP byte stream cut into frames by `read_frame`, each framed
//! again by `frame_of`, which must give back the bytes it was read from.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use huizhen::edge::ice_tcp::{frame_of, read_frame, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// Runs a future that never waits (reading from a slice) to its end.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a slice reader never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let mut buf = vec![0u8; MAX_FRAME];
    // Each frame consumes at least its 2-byte length, so this ends.
    loop {
        let before = stream;
        let Ok(len) = ready(read_frame(&mut stream, &mut buf)) else {
            break;
        };
        let consumed = before.len() - stream.len();
        assert_eq!(consumed, len + 2);
        let framed = frame_of(&buf[..len]).expect("a read frame fits a frame");
        assert_eq!(framed, before[..consumed]);
    }
    // A frame too long for the 16-bit length is refused, not cut.
    if data.len() > MAX_FRAME {
        assert!(frame_of(data).is_none());
    }
});
