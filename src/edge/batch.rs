//! Batched UDP sends: the datagrams one burst of input produces (a video packet forwarded to
//! every subscriber of a room, a frame's packets to one subscriber) leave with one
//! `sendmmsg(2)` system call on Linux instead of one `sendto(2)` each. Elsewhere each datagram
//! is sent on its own. Sends never block: a full socket buffer drops the datagram (the caller
//! counts it), like `try_send_to`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;

/// Most datagrams per system call.
pub const MAX_BATCH: usize = 64;

/// What became of one datagram.
#[derive(Debug)]
pub enum Sent {
    /// Handed to the kernel.
    Ok,
    /// The socket's send buffer was full: dropped.
    WouldBlock,
    /// Another error (no route, message too long): dropped.
    Failed(io::Error),
}

/// Datagrams waiting to be sent.
#[derive(Debug, Default)]
pub struct SendBatch {
    destinations: Vec<SocketAddr>,
    contents: Vec<Vec<u8>>,
    forwarded_from: Vec<Option<Instant>>,
}

impl SendBatch {
    /// Adds a datagram; `forwarded_from` is when the media packet it carries was received.
    pub fn push(
        &mut self,
        destination: SocketAddr,
        contents: Vec<u8>,
        forwarded_from: Option<Instant>,
    ) {
        self.destinations.push(destination);
        self.contents.push(contents);
        self.forwarded_from.push(forwarded_from);
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.contents.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }

    /// Sends everything waiting on `socket`, telling `outcome` what became of each datagram
    /// (with its `forwarded_from`), in order.
    pub fn send(&mut self, socket: &UdpSocket, mut outcome: impl FnMut(Sent, Option<Instant>)) {
        let mut start = 0;
        while start < self.len() {
            let end = (start + MAX_BATCH).min(self.len());
            let results = send_many(
                socket,
                &self.destinations[start..end],
                &self.contents[start..end],
            );
            for (result, from) in results.into_iter().zip(&self.forwarded_from[start..end]) {
                outcome(result, *from);
            }
            start = end;
        }
        self.destinations.clear();
        self.contents.clear();
        self.forwarded_from.clear();
    }
}

fn classify(e: io::Error) -> Sent {
    if e.kind() == io::ErrorKind::WouldBlock {
        Sent::WouldBlock
    } else {
        Sent::Failed(e)
    }
}

#[cfg(target_os = "linux")]
fn send_many(socket: &UdpSocket, destinations: &[SocketAddr], contents: &[Vec<u8>]) -> Vec<Sent> {
    use std::os::fd::AsRawFd;

    let addresses: Vec<socket2::SockAddr> = destinations
        .iter()
        .map(|d| socket2::SockAddr::from(*d))
        .collect();
    let mut iovecs: Vec<libc::iovec> = contents
        .iter()
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = addresses
        .iter()
        .zip(iovecs.iter_mut())
        .map(|(address, iovec)| {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = address.as_ptr() as *mut libc::c_void;
            header.msg_namelen = address.len();
            header.msg_iov = iovec as *mut libc::iovec;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let fd = socket.as_raw_fd();
    let mut results = Vec::with_capacity(headers.len());
    let mut next = 0;
    while next < headers.len() {
        let remaining = (headers.len() - next) as libc::c_uint;
        // SAFETY: `headers[next..]` are valid mmsghdrs whose name and iovec pointers point into
        // `addresses`, `iovecs` and `contents`, which outlive the call; the kernel writes only
        // `msg_len`.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers[next..].as_mut_ptr(),
                remaining,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            // The first remaining datagram failed: drop it and go on with the rest.
            results.push(classify(io::Error::last_os_error()));
            next += 1;
        } else {
            let sent = sent as usize;
            results.extend((0..sent).map(|_| Sent::Ok));
            next += sent.max(1).min(headers.len() - next);
            if sent == 0 {
                // Cannot happen for a non-empty vector; never loop on it.
                results.push(Sent::Failed(io::Error::other("sendmmsg sent nothing")));
            }
        }
    }
    results
}

#[cfg(not(target_os = "linux"))]
fn send_many(socket: &UdpSocket, destinations: &[SocketAddr], contents: &[Vec<u8>]) -> Vec<Sent> {
    destinations
        .iter()
        .zip(contents)
        .map(|(d, c)| match socket.try_send_to(c, *d) {
            Ok(_) => Sent::Ok,
            Err(e) => classify(e),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_complete_and_in_order_at_several_receivers() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut batch = SendBatch::default();
        // More than one system call's worth, alternating receivers.
        let n = MAX_BATCH + 10;
        for i in 0..n {
            let to = if i % 2 == 0 {
                a.local_addr().unwrap()
            } else {
                b.local_addr().unwrap()
            };
            batch.push(to, format!("datagram {i}").into_bytes(), None);
        }
        let mut outcomes = Vec::new();
        batch.send(&sender, |sent, _| outcomes.push(matches!(sent, Sent::Ok)));
        assert_eq!(outcomes.len(), n);
        assert!(outcomes.iter().all(|ok| *ok));
        assert!(batch.is_empty());
        let mut buf = [0u8; 64];
        for i in (0..n).step_by(2) {
            let (len, _) = a.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], format!("datagram {i}").as_bytes());
        }
        for i in (1..n).step_by(2) {
            let (len, _) = b.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], format!("datagram {i}").as_bytes());
        }
    }

    #[tokio::test]
    async fn a_failing_datagram_is_reported_and_the_rest_still_go() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let mut batch = SendBatch::default();
        batch.push(to, b"first".to_vec(), None);
        // Too large for UDP: EMSGSIZE.
        batch.push(to, vec![0u8; 70_000], None);
        // An IPv6 destination on an IPv4 socket: EAFNOSUPPORT/EINVAL.
        batch.push("[::1]:9".parse().unwrap(), b"v6".to_vec(), None);
        let t = Instant::now();
        batch.push(to, b"last".to_vec(), Some(t));
        let mut outcomes = Vec::new();
        batch.send(&sender, |sent, from| {
            outcomes.push((matches!(sent, Sent::Ok), from))
        });
        assert_eq!(
            outcomes,
            vec![(true, None), (false, None), (false, None), (true, Some(t))]
        );
        let mut buf = [0u8; 64];
        let (len, _) = receiver.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"first");
        let (len, _) = receiver.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"last");
    }
}
