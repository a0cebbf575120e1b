//! The HTTP(S) accept loop: what a connection may cost before it has said anything useful.
//!
//! - **Caps.** At most `max_connections` open HTTP connections in all and
//!   `max_connections_per_source` from one IP address. A connection over a cap is closed at
//!   once, before TLS or any byte is read, and counted. The permit travels with the connection's
//!   I/O ([`Admitted`]), so a connection upgraded to a WebSocket keeps holding it until the
//!   socket closes: idle WebSockets count like any other connection.
//! - **Deadlines.** A TLS handshake must finish within `tls_handshake_timeout`; the first byte
//!   must come within `header_read_timeout` of the connection opening, and a request head must
//!   arrive whole within it of its first byte (hyper's `header_read_timeout`): a client sending
//!   one header byte at a time no longer holds a connection for ever. A connection from which
//!   nothing is read for `idle_timeout` (an idle keep-alive connection, a WebSocket whose client
//!   stopped pinging) is closed.
//!
//! Why by hand: `axum::serve` takes no limits and no timeouts; this is its loop with them.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::debug;

/// Connection limits of the HTTP listener (the `[http]` section).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one IP address.
    pub max_connections_per_source: usize,
    /// A request head must arrive within this (and an idle keep-alive connection closes).
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// A connection (an upgraded WebSocket too) from which nothing is read this long is
    /// closed: twice the longest ping interval clients are asked to keep (30 s).
    pub idle_timeout: Duration,
}

/// Why a connection was closed early (the metric's label).
#[derive(Debug, Clone, Copy)]
enum Refused {
    Total,
    PerSource,
    TlsHandshake,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Total => "total_cap",
            Refused::PerSource => "source_cap",
            Refused::TlsHandshake => "tls_handshake",
        }
    }
}

/// `huizhen_http_*`: open connections and early closings, by reason (no addresses).
#[derive(Clone)]
pub struct HttpMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl HttpMetrics {
    /// Register into `registry` (the `huizhen_http` component).
    pub fn new(registry: &Registry) -> HttpMetrics {
        let open = IntGauge::new("connections", "Open HTTP connections (WebSockets included)")
            .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "HTTP connections closed before a request: over a cap, or a TLS handshake that failed or took too long",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(open.clone())).expect("unique");
        registry
            .register(Box::new(refused.clone()))
            .expect("unique");
        for r in [Refused::Total, Refused::PerSource, Refused::TlsHandshake] {
            refused.with_label_values(&[r.label()]);
        }
        HttpMetrics { open, refused }
    }
}

/// Counts connections against the caps.
pub struct Gate {
    limits: ConnLimits,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: HttpMetrics,
}

impl Gate {
    /// A gate for `limits`.
    pub fn new(limits: ConnLimits, metrics: HttpMetrics) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            counts: Mutex::new((0, HashMap::new())),
            metrics,
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_source) = &mut *counts;
        if *total >= self.limits.max_connections {
            return Err(Refused::Total);
        }
        let n = per_source.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_source {
            return Err(Refused::PerSource);
        }
        *n += 1;
        *total += 1;
        self.metrics.open.inc();
        Ok(Permit {
            gate: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; given back when dropped.
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_source) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = per_source.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_source.remove(&self.ip);
            }
        }
        self.gate.metrics.open.dec();
    }
}

/// A connection's I/O with its permit: the permit lives as long as the I/O, through an
/// upgrade to a WebSocket too.
pub struct Admitted<S> {
    inner: S,
    _permit: Permit,
    /// Closes the connection when nothing has been read for this long.
    idle: Duration,
    /// When reading next times out: the first byte's deadline, then `idle` after each read.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Admitted<S> {
    fn new(inner: S, permit: Permit, limits: &ConnLimits) -> Self {
        Admitted {
            inner,
            _permit: permit,
            idle: limits.idle_timeout,
            deadline: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing read within the deadline",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

crate::http::delegate_async_write!(Admitted);

/// The largest request head (request line and headers) a connection may send.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Read a connection's first request head (up to its blank line, or [`MAX_HEAD_BYTES`])
/// into a buffer that grows only with what arrived: hyper would set aside ~16 KiB for it
/// (a read and a write buffer of 8 KiB each) from the first byte, for a stranger sending a
/// byte a second too. The first byte must come by `Admitted`'s first-byte deadline; the rest of
/// the head within `head_timeout` of it. `None`: the client went away or was too slow.
async fn first_head<S: AsyncRead + Unpin>(io: &mut S, head_timeout: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    let n = io.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    head.extend_from_slice(&chunk[..n]);
    let rest = async {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(3);
            if head[from..].windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD_BYTES {
                return Some(());
            }
            searched = head.len();
            let n = io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(head_timeout, rest).await.ok()??;
    Some(head)
}

/// A connection whose first bytes were read already ([`first_head`]): they are read again
/// first, then the connection.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::http::delegate_async_write!(Prefixed);

/// Serve HTTP/1.1 (upgrades included) or HTTP/2 on one admitted connection.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    peer: std::net::SocketAddr,
    limits: ConnLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: axum::http::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head above this gets 431: hyper's default (~400 KiB) would let a slow
        // client hold that much per connection.
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let _ = watcher.watch(conn.into_owned()).await;
}

/// Serve `app` on `listener` (over TLS with `tls`) until `shutdown`, then give open
/// connections `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let permit = match gate.admit(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                gate.metrics
                    .refused
                    .with_label_values(&[reason.label()])
                    .inc();
                drop(stream);
                continue;
            }
        };
        // Signaling is many small frames: without TCP_NODELAY a frame written right after
        // another waits for the client's delayed ACK (~40 ms).
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = gate.limits;
        let metrics = gate.metrics.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Until a request head has come, the task holds only the connection: serving it
            // (hyper's connection, its buffers, the router) is boxed and made afterwards, so
            // that an idle or slow stranger costs a few KiB.
            match tls {
                None => {
                    let mut io = Admitted::new(stream, permit, &limits);
                    let Some(prefix) = first_head(&mut io, limits.header_read_timeout).await else {
                        return;
                    };
                    let io = Prefixed {
                        prefix,
                        at: 0,
                        inner: io,
                    };
                    Box::pin(serve_connection(io, app, peer, limits, watcher)).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                            .await;
                    let Ok(Ok(stream)) = handshake else {
                        metrics
                            .refused
                            .with_label_values(&[Refused::TlsHandshake.label()])
                            .inc();
                        return;
                    };
                    let mut io = Admitted::new(stream, permit, &limits);
                    let Some(prefix) = first_head(&mut io, limits.header_read_timeout).await else {
                        return;
                    };
                    let io = Prefixed {
                        prefix,
                        at: 0,
                        inner: io,
                    };
                    Box::pin(serve_connection(io, app, peer, limits, watcher)).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("http: connections still open after the grace; closing");
    }
}
