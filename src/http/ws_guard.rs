//! What a WebSocket may make the server hold before it has said who it is.
//!
//! tungstenite reserves a frame's whole announced length as soon as it has read the frame's
//! header. A stranger announcing a frame of the protocol's largest size and sending a few bytes
//! of it would make the server reserve that much per socket (measured: 1,000 sockets each
//! announcing 1 MB held ~1 GiB). And a stranger's socket should not be able to send much at
//! all: its first frames are `auth` with a token (at most 8 KiB), `join`, `resume` or `ping`.
//!
//! [`StrangerGuard`] sits between the upgraded connection and tungstenite. Until the session
//! [`Trust::grant`]s trust (authenticated, joined or resumed), the socket may send at most
//! [`STRANGER_BYTES`] in all, and every frame it announces must fit in what is left of them:
//! the guard reads the frame headers as they pass (RFC 6455 §5.2) and fails the read before
//! tungstenite sees a header announcing more. Once trusted, bytes pass untouched and
//! tungstenite's own limits apply (the protocol's frame limit).
//!
//! Sans-IO at its heart: [`FrameScan`] is fed bytes and answers whether they stay within the
//! budget; the `AsyncRead` wrapper only feeds it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// What a socket may send before it is trusted: its first frames fit, with room for a few
/// pings and refusals.
pub const STRANGER_BYTES: u64 = 12 * 1024;

/// Shared between the guard and the session: set once the session trusts the socket.
#[derive(Clone, Debug, Default)]
pub struct Trust(Arc<AtomicBool>);

impl Trust {
    /// The socket authenticated, joined or resumed: no more limits of the guard's own.
    pub fn grant(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn granted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a stranger's bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// More bytes than [`STRANGER_BYTES`] before trust.
    #[error("more than {STRANGER_BYTES} bytes before authenticating")]
    OverBudget,
    /// A frame announced more than is left of the budget.
    #[error("a frame of {0} bytes announced before authenticating")]
    FrameTooLarge(u64),
}

/// Follows WebSocket frame boundaries in a client's byte stream and keeps its total within a
/// budget.
#[derive(Debug, Clone)]
pub struct FrameScan {
    /// Bytes the stream may still carry.
    left: u64,
    /// Payload bytes of the current frame still to come.
    payload: u64,
    /// The header being read (at most 14 bytes) and how much of it has arrived.
    header: [u8; 14],
    have: usize,
}

impl FrameScan {
    /// A scan allowing `budget` bytes.
    pub fn new(budget: u64) -> FrameScan {
        FrameScan {
            left: budget,
            payload: 0,
            header: [0; 14],
            have: 0,
        }
    }

    /// Account for `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), GuardError> {
        if bytes.len() as u64 > self.left {
            return Err(GuardError::OverBudget);
        }
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = self.payload.min(bytes.len() as u64);
                self.payload -= skip;
                self.left -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            self.left -= 1;
            bytes = &bytes[1..];
            if let Some((header_len, payload)) = header_size(&self.header[..self.have]) {
                if self.have == header_len {
                    // Whatever of the frame has not arrived must fit in what is left.
                    if payload > self.left {
                        return Err(GuardError::FrameTooLarge(payload));
                    }
                    self.payload = payload;
                    self.have = 0;
                }
            }
        }
        Ok(())
    }
}

/// The length of a frame header that starts with `h`, and its payload length, once enough of
/// it is known.
fn header_size(h: &[u8]) -> Option<(usize, u64)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    match h[1] & 0x7f {
        126 => {
            let len = 4 + mask;
            (h.len() >= 4).then(|| (len, u64::from(u16::from_be_bytes([h[2], h[3]]))))
        }
        127 => {
            let len = 10 + mask;
            (h.len() >= 10).then(|| {
                let mut b = [0; 8];
                b.copy_from_slice(&h[2..10]);
                (len, u64::from_be_bytes(b))
            })
        }
        n => Some((2 + mask, u64::from(n))),
    }
}

/// An upgraded connection whose reads are checked by a [`FrameScan`] until it is trusted.
pub struct StrangerGuard<S> {
    inner: S,
    trust: Trust,
    scan: FrameScan,
}

impl<S> StrangerGuard<S> {
    /// Guard `inner` (read from its first byte after the upgrade) until `trust` is granted.
    pub fn new(inner: S, trust: Trust) -> StrangerGuard<S> {
        StrangerGuard {
            inner,
            trust,
            scan: FrameScan::new(STRANGER_BYTES),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StrangerGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.trust.granted() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Err(e) = this.scan.feed(&buf.filled()[before..]) {
                // The bytes are dropped with the connection: tungstenite never sees them.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
        polled
    }
}

crate::http::delegate_async_write!(StrangerGuard);

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload`, its length encoded the shortest way.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_within_the_budget_pass_in_any_split() {
        let mut stream = frame(br#"{"type":"auth","token":"x"}"#);
        stream.extend(frame(&[b'a'; 300]));
        stream.extend(frame(&[b'b'; 5000]));
        for chunk in [1, 2, 3, 7, 14, 100, stream.len()] {
            let mut scan = FrameScan::new(STRANGER_BYTES);
            for part in stream.chunks(chunk) {
                scan.feed(part).unwrap();
            }
            assert_eq!((scan.payload, scan.have), (0, 0), "chunk {chunk}");
        }
    }

    #[test]
    fn a_header_announcing_more_than_the_budget_is_refused_before_its_payload() {
        // 64-bit length of 1 MB, the attack measured in the module docs.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&1_000_000u64.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        for chunk in [1, 5, header.len()] {
            let mut scan = FrameScan::new(STRANGER_BYTES);
            let result: Result<Vec<()>, _> = header.chunks(chunk).map(|p| scan.feed(p)).collect();
            assert_eq!(result, Err(GuardError::FrameTooLarge(1_000_000)));
        }
        // 16-bit length too, once what came before used part of the budget.
        let mut scan = FrameScan::new(STRANGER_BYTES);
        scan.feed(&frame(&[b'a'; 8000])).unwrap();
        assert_eq!(
            scan.feed(&frame(&[b'a'; 5000])[..8]),
            Err(GuardError::FrameTooLarge(5000))
        );
    }

    #[test]
    fn many_small_frames_spend_the_budget() {
        let mut scan = FrameScan::new(STRANGER_BYTES);
        let ping = frame(b"{\"type\":\"ping\"}");
        let fits = STRANGER_BYTES as usize / ping.len();
        for _ in 0..fits {
            scan.feed(&ping).unwrap();
        }
        assert_eq!(scan.feed(&ping), Err(GuardError::OverBudget));
    }

    #[tokio::test]
    async fn the_guard_fails_the_read_and_lets_everything_through_once_trusted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4 << 20);
        let trust = Trust::default();
        let mut guard = StrangerGuard::new(server, trust.clone());
        client.write_all(&frame(b"hello")).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = guard.read(&mut buf).await.unwrap();
        assert_eq!(&buf[n - 5..n], b"hello");
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&1_000_000u64.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        client.write_all(&header).await.unwrap();
        let err = guard.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A trusted socket: a 1 MB frame passes (tungstenite's own limit applies there).
        let (mut client, server) = tokio::io::duplex(4 << 20);
        let trust = Trust::default();
        let mut guard = StrangerGuard::new(server, trust.clone());
        trust.grant();
        let big = frame(&vec![b'z'; 1_000_000]);
        client.write_all(&big).await.unwrap();
        drop(client);
        let mut all = Vec::new();
        guard.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, big);
    }
}
