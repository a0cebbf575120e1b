//! The embedded TURN server's I/O: its UDP socket (read by the media task itself) and its TCP
//! and TLS listeners (a reader task per connection, like ICE-TCP). A TCP allocation's data
//! connection (RFC 6062) becomes, once bound, an ICE-TCP connection of the SFU whose remote
//! address is the relayed one.
//!
//! The core ([`crate::turn::TurnServer`]) lives in the media task next to the SFU, so relayed
//! media crosses no channel and no socket between them: a client's ChannelData becomes an SFU
//! input with the relayed address as its source, and the SFU's datagrams to a relayed address
//! are wrapped for the client (see [`TurnEdge::relay_to_client`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::{ice_tcp, MediaCommand, MediaHandle};
use crate::turn::metrics::Refusal;
use crate::turn::{ClientKey, Transport, TurnMetrics, TurnServer};

/// Largest TURN message over TCP: a STUN header plus a 16-bit length, or ChannelData.
const MAX_STREAM_MESSAGE: usize = 20 + u16::MAX as usize;
/// A new TCP/TLS connection must complete TLS and send its first message within this.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing this long is closed (allocations are refreshed every few
/// minutes and media flows constantly; 11 minutes covers the default 10-minute lifetime).
const IDLE_TIMEOUT: Duration = Duration::from_secs(11 * 60);

/// The TURN parts the media task owns.
pub struct TurnEdge {
    /// The core.
    pub core: TurnServer,
    /// The UDP listener, if TURN over UDP is on.
    pub udp: Option<UdpSocket>,
    /// Its address (the `listen` of UDP clients' keys).
    pub udp_addr: Option<SocketAddr>,
    /// Writers of TCP/TLS client connections.
    pub streams: HashMap<ClientKey, mpsc::Sender<Vec<u8>>>,
    /// Metrics.
    pub metrics: TurnMetrics,
    /// When the core's timers are next looked at.
    pub next_tick: Instant,
    /// Relayed datagrams for UDP clients, sent with one `sendmmsg` like the SFU's own.
    pub batch: super::batch::SendBatch,
}

impl TurnEdge {
    /// The core and its UDP socket.
    pub fn new(core: TurnServer, udp: Option<UdpSocket>, metrics: TurnMetrics) -> Self {
        let udp_addr = udp.as_ref().and_then(|u| u.local_addr().ok());
        TurnEdge {
            core,
            udp,
            udp_addr,
            streams: HashMap::new(),
            metrics,
            next_tick: Instant::now(),
            batch: super::batch::SendBatch::default(),
        }
    }

    /// Send bytes the core produced to `key`'s client, never waiting; relayed media to a UDP
    /// client waits in the batch for [`Self::send_batch`] (`forwarded_from`: when the packet
    /// it carries reached the SFU).
    pub fn relay(&mut self, key: ClientKey, bytes: Vec<u8>, forwarded_from: Option<Instant>) {
        if key.transport == Transport::Udp && self.udp.is_some() {
            self.batch.push(key.client, bytes, forwarded_from);
            return;
        }
        self.send_to_client(key, bytes);
    }

    /// Send the batched datagrams; `sent(forwarded_from)` for each one that left.
    pub fn send_batch(&mut self, mut sent: impl FnMut(Option<Instant>)) {
        let (Some(udp), false) = (&self.udp, self.batch.is_empty()) else {
            return;
        };
        let metrics = &self.metrics;
        self.batch
            .send(udp, |outcome, forwarded_from| match outcome {
                super::batch::Sent::Ok => sent(forwarded_from),
                _ => metrics.refuse(Refusal::QueueFull),
            });
    }

    /// Send bytes the core produced to `key`'s client, never waiting.
    pub fn send_to_client(&mut self, key: ClientKey, bytes: Vec<u8>) {
        match key.transport {
            Transport::Udp => {
                if let Some(udp) = &self.udp {
                    if udp.try_send_to(&bytes, key.client).is_err() {
                        self.metrics.refuse(Refusal::QueueFull);
                    }
                }
            }
            Transport::Tcp | Transport::Tls => match self.streams.get(&key) {
                Some(writer) => {
                    if writer.try_send(bytes).is_err() {
                        self.metrics.refuse(Refusal::QueueFull);
                    }
                }
                None => self.metrics.refuse(Refusal::NoAllocation),
            },
        }
    }

    /// A datagram the SFU sends to a relayed address (the caller checked [`TurnServer::owns`]):
    /// wrapped for the client and batched or queued.
    pub fn relay_to_client(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        forwarded_from: Option<Instant>,
    ) {
        if let Some((key, bytes)) = self.core.handle_peer(now, destination, source, contents) {
            self.relay(key, bytes, forwarded_from);
        }
    }

    /// Look at the core's timers at most once a second.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.core.handle_timeout(now);
            self.next_tick = now + Duration::from_secs(1);
        }
    }
}

/// TLS for the TURN listener.
pub type TlsAcceptor = tokio_rustls::TlsAcceptor;

/// Accept TURN-over-TCP (or TLS when `tls` is set) connections until shutdown.
pub async fn run_listener(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    media: MediaHandle,
    limits: StreamLimits,
    metrics: TurnMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    if limits.open.load(Ordering::Relaxed) >= limits.max_connections {
                        metrics.refuse(Refusal::TooManyConnections);
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let guard = ConnectionGuard::new(&limits, &metrics, transport);
                    tokio::spawn(serve(stream, client, tls.clone(), media.clone(), limits.queue, metrics.clone(), guard));
                }
                Err(e) => {
                    debug!(error = %e, "turn accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Connection limits shared by the TCP and TLS listeners.
#[derive(Clone)]
pub struct StreamLimits {
    /// Open connections now.
    pub open: Arc<AtomicUsize>,
    /// Most open connections.
    pub max_connections: usize,
    /// Messages queued towards one client.
    pub queue: usize,
}

/// Counts a connection while it lives.
struct ConnectionGuard {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl ConnectionGuard {
    fn new(limits: &StreamLimits, metrics: &TurnMetrics, transport: Transport) -> Self {
        limits.open.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics.connections.with_label_values(&[transport.label()]);
        gauge.inc();
        ConnectionGuard {
            open: limits.open.clone(),
            gauge,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    tls: Option<TlsAcceptor>,
    media: MediaHandle,
    queue: usize,
    metrics: TurnMetrics,
    _guard: ConnectionGuard,
) {
    let Ok(listen) = stream.local_addr() else {
        return;
    };
    match tls {
        None => {
            let key = ClientKey {
                transport: Transport::Tcp,
                client,
                listen,
            };
            let (read, write) = stream.into_split();
            pump(read, write, key, media, queue, metrics).await;
        }
        Some(acceptor) => {
            let key = ClientKey {
                transport: Transport::Tls,
                client,
                listen,
            };
            let accepted =
                tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, acceptor.accept(stream)).await;
            let Ok(Ok(tls_stream)) = accepted else {
                debug!("turn tls handshake failed or timed out");
                metrics.refuse(Refusal::Malformed);
                return;
            };
            let (read, write) = tokio::io::split(tls_stream);
            pump(read, write, key, media, queue, metrics).await;
        }
    }
}

/// Frames in to the media task, bytes out from the bounded queue, until either side ends.
/// After a successful `ConnectionBind` the connection is a TCP allocation's data connection
/// and carries ICE-TCP frames to the SFU ([`relay_tcp`]).
async fn pump<R, W>(
    mut read: R,
    mut write: W,
    key: ClientKey,
    media: MediaHandle,
    queue: usize,
    metrics: TurnMetrics,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (writer, mut outgoing) = mpsc::channel::<Vec<u8>>(queue);
    let raw = writer.clone();
    if media
        .send(MediaCommand::TurnStreamOpened { key, writer })
        .await
        .is_err()
    {
        return;
    }
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut buf = vec![0u8; MAX_STREAM_MESSAGE];
    let mut first = true;
    let bound = loop {
        let limit = if first {
            FIRST_MESSAGE_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        let read = tokio::time::timeout(limit, read_message(&mut read, &mut buf)).await;
        let len = match read {
            Ok(Ok(len)) => len,
            Ok(Err(FrameError::Malformed)) => {
                metrics.refuse(Refusal::Malformed);
                break None;
            }
            Ok(Err(FrameError::Closed)) | Err(_) => break None,
        };
        first = false;
        let data = buf[..len].to_vec();
        if is_connection_bind(&data) {
            // Nothing more is read until the outcome is known: on success the bytes that
            // follow are the data connection's, not TURN messages.
            let (bound, outcome) = oneshot::channel();
            let command = MediaCommand::TurnConnectionBind { key, data, bound };
            if media.send(command).await.is_err() {
                break None;
            }
            match outcome.await {
                Ok(Some(bound)) => break Some(bound),
                Ok(None) => continue,
                Err(_) => break None,
            }
        }
        if media
            .send(MediaCommand::TurnStreamFrame { key, data })
            .await
            .is_err()
        {
            break None;
        }
    };
    if let Some((relayed, peer)) = bound {
        relay_tcp(&mut read, raw, relayed, peer, &media, queue, &metrics).await;
    } else {
        drop(raw);
    }
    let _ = media.send(MediaCommand::TurnStreamClosed { key }).await;
    write_task.abort();
}

/// Whether `message` is a `ConnectionBind` request (RFC 6062): type 0x000b.
fn is_connection_bind(message: &[u8]) -> bool {
    message.len() >= 20 && message[..2] == [0x00, 0x0b]
}

/// A bound data connection: to the SFU it is an ICE-TCP connection from `relayed` to `peer`
/// (RFC 4571 frames both ways), until either side ends or the TURN core closes it (its
/// allocation went away: the edge drops the frame queue, which ends this).
async fn relay_tcp<R: AsyncRead + Unpin>(
    read: &mut R,
    raw: mpsc::Sender<Vec<u8>>,
    relayed: SocketAddr,
    peer: SocketAddr,
    media: &MediaHandle,
    queue: usize,
    metrics: &TurnMetrics,
) {
    let (framed, mut frames) = mpsc::channel::<Vec<u8>>(queue);
    let out = metrics.clone();
    let mut forward = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let Some(bytes) = ice_tcp::frame_of(&frame) else {
                continue;
            };
            out.relayed_out.inc();
            out.relayed_bytes.inc_by(frame.len() as u64);
            if raw.send(bytes).await.is_err() {
                break;
            }
        }
    });
    let opened = MediaCommand::TcpOpened {
        peer: relayed,
        writer: framed,
    };
    if media.send(opened).await.is_err() {
        forward.abort();
        return;
    }
    let mut buf = vec![0u8; ice_tcp::MAX_FRAME];
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, ice_tcp::read_frame(read, &mut buf)) => read,
            _ = &mut forward => break,
        };
        let Ok(Ok(len)) = read else {
            break;
        };
        metrics.relayed_in.inc();
        metrics.relayed_bytes.inc_by(len as u64);
        let frame = MediaCommand::TcpFrame {
            peer: relayed,
            local: peer,
            data: buf[..len].to_vec(),
        };
        if media.send(frame).await.is_err() {
            break;
        }
    }
    let _ = media.send(MediaCommand::TcpClosed { peer: relayed }).await;
    forward.abort();
}

enum FrameError {
    Closed,
    Malformed,
}

/// One TURN message from a stream (RFC 8656 §3.5): a STUN message (20-byte header, length
/// at bytes 2..4) or ChannelData (4-byte header, padded to a multiple of 4 over TCP).
/// Returns its length in `buf` (the padding is read and dropped).
async fn read_message<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    read.read_exact(&mut buf[..4])
        .await
        .map_err(|_| FrameError::Closed)?;
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let (total, padded) = match buf[0] {
        0x00 | 0x01 => {
            if length % 4 != 0 {
                return Err(FrameError::Malformed);
            }
            (20 + length, 20 + length)
        }
        0x40..=0x4f => (4 + length, (4 + length).next_multiple_of(4)),
        _ => return Err(FrameError::Malformed),
    };
    if padded > buf.len() {
        return Err(FrameError::Malformed);
    }
    read.read_exact(&mut buf[4..padded])
        .await
        .map_err(|_| FrameError::Closed)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: &[u8]) -> Vec<Result<usize, &'static str>> {
        let mut reader = bytes;
        let mut buf = vec![0u8; MAX_STREAM_MESSAGE];
        let mut out = Vec::new();
        for _ in 0..8 {
            match read_message(&mut reader, &mut buf).await {
                Ok(n) => out.push(Ok(n)),
                Err(FrameError::Closed) => break,
                Err(FrameError::Malformed) => {
                    out.push(Err("malformed"));
                    break;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn stream_framing_cuts_stun_and_padded_channel_data() {
        let mut stream = Vec::new();
        // A STUN header with 4 bytes of attributes.
        stream.extend_from_slice(&[0x00, 0x01, 0x00, 0x04]);
        stream.extend_from_slice(&[0u8; 16]);
        stream.extend_from_slice(&[1, 2, 3, 4]);
        // ChannelData of 5 bytes, padded to 8.
        stream.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 9, 9, 9, 9, 9, 0, 0, 0]);
        // ChannelData of 4 bytes: no padding.
        stream.extend_from_slice(&[0x40, 0x01, 0x00, 0x04, 7, 7, 7, 7]);
        assert_eq!(frames(&stream).await, vec![Ok(24), Ok(9), Ok(8)]);
    }

    #[tokio::test]
    async fn a_stream_that_is_not_turn_is_malformed() {
        // A TLS ClientHello on the plain TCP port.
        assert_eq!(
            frames(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await,
            vec![Err("malformed")]
        );
        // A STUN length that is not a multiple of 4.
        assert_eq!(
            frames(&[0x00, 0x01, 0x00, 0x03, 0, 0, 0, 0]).await,
            vec![Err("malformed")]
        );
    }
}
