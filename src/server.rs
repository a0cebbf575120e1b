//! Server assembly: binds the sockets, starts the media task, the ICE-TCP acceptor and the
//! HTTP front, and stops them in order.
//!
//! [`start`] returns once every socket is bound, so tests can start a server on port 0 and read
//! the real addresses from the [`ServerHandle`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::edge::{self, LocalAddress, MediaHandle, MediaTask};
use crate::http::{self, ws::SignalingMetrics, AppState};
use crate::sfu::{Sfu, SfuConfig, SfuMetrics};
use crate::telemetry::Metrics;

/// How long shutdown waits for sessions to finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS certificate or key unusable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A running server.
pub struct ServerHandle {
    http_addr: SocketAddr,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tls: bool,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    media: MediaHandle,
    metrics: Metrics,
}

impl ServerHandle {
    /// Bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// Bound media UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }
    /// Bound ICE-TCP address, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }
    /// True when HTTPS/WSS is served.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// The media task's handle.
    pub fn media(&self) -> &MediaHandle {
        &self.media
    }
    /// Current metrics in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stop: refuse new sessions, tell every participant `bye`, then end all tasks.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                warn!("a task did not stop within the grace period; aborting it");
                abort.abort();
            }
        }
        info!("server stopped");
    }
}

/// Socket buffer asked for on the media UDP socket: bursts of keyframes from many publishers
/// must queue in the kernel rather than be dropped while the media task is busy.
const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let socket = UdpSocket::bind(addr).await.map_err(|source| ServerError::Bind {
        what: "media UDP",
        addr,
        source,
    })?;
    let sock = socket2::SockRef::from(&socket);
    for (what, result) in [
        ("receive", sock.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", sock.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            warn!(error = %e, "cannot enlarge the media UDP {what} buffer");
        }
    }
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < UDP_BUFFER_BYTES {
        info!(
            granted,
            wanted = UDP_BUFFER_BYTES,
            "kernel capped the media UDP receive buffer (raise net.core.rmem_max for heavy load)"
        );
    }
    Ok(socket)
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { what, addr, source })
}

/// Bind everything and start serving.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut metrics = Metrics::new();
    let sfu_metrics = SfuMetrics::new(&metrics.component("sfu"));
    let signaling = SignalingMetrics::new(&metrics.component("signaling"));

    let udp = bind_udp(config.media.udp_listen).await?;
    let udp_addr = udp.local_addr().map_err(|source| ServerError::Bind {
        what: "media UDP",
        addr: config.media.udp_listen,
        source,
    })?;
    let ice_tcp = if config.media.announce_tcp {
        Some(bind_tcp("ICE-TCP", config.media.tcp_listen).await?)
    } else {
        None
    };
    let tcp_addr = ice_tcp.as_ref().and_then(|l| l.local_addr().ok());
    let http_listener = bind_tcp("HTTP", config.http.listen).await?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;

    let sfu_config = sfu_config(&config, udp_addr, tcp_addr);
    let sfu = Sfu::new(sfu_config, sfu_metrics);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let local = LocalAddress {
        announce: config.media.announce.clone(),
    };
    let (media, media_task) = edge::spawn(MediaTask { sfu, udp, local }, shutdown_rx.clone());
    let mut tasks = Vec::new();
    if let Some(listener) = ice_tcp {
        tasks.push(tokio::spawn(edge::ice_tcp::run(
            listener,
            media.clone(),
            config.media.tcp_queue_frames,
            shutdown_rx.clone(),
        )));
    }
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        media: media.clone(),
        metrics: metrics.clone(),
        signaling,
        connections: Arc::new(Semaphore::new(config.http.max_connections)),
        draining: draining.clone(),
    };
    let app = http::router(state);
    let tls = config.http.tls_cert.is_some();
    let http_task = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => {
            spawn_https(http_listener, app, cert, key, shutdown_rx.clone()).await?
        }
        _ => {
            warn!(
                "no TLS certificate configured: serving plain HTTP (local-only mode; browsers \
                 allow camera access only on localhost without TLS)"
            );
            spawn_http(http_listener, app, shutdown_rx.clone())
        }
    };
    // The media task stops last so that sessions still get their `bye`.
    tasks.insert(0, http_task);
    tasks.push(media_task);
    info!(%http_addr, %udp_addr, tcp = ?tcp_addr, tls, "huizhen listening");
    Ok(ServerHandle {
        http_addr,
        udp_addr,
        tcp_addr,
        tls,
        shutdown: shutdown_tx,
        draining,
        tasks,
        media,
        metrics,
    })
}

fn sfu_config(config: &Config, udp: SocketAddr, tcp: Option<SocketAddr>) -> SfuConfig {
    let m = &config.media;
    let udp_candidates = if m.announce_udp {
        m.announce.iter().map(|ip| SocketAddr::new(*ip, udp.port())).collect()
    } else {
        Vec::new()
    };
    let tcp_candidates = match tcp {
        Some(tcp) if m.announce_tcp => {
            m.announce.iter().map(|ip| SocketAddr::new(*ip, tcp.port())).collect()
        }
        _ => Vec::new(),
    };
    SfuConfig {
        udp_candidates,
        tcp_candidates,
        max_participants_per_room: m.max_participants_per_room,
        max_participants: m.max_participants,
        keyframe_throttle: m.keyframe_throttle(),
        peer_timeout: m.peer_timeout(),
        connect_timeout: m.connect_timeout(),
    }
}

fn spawn_http(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, "HTTP server failed");
        }
    })
}

async fn spawn_https(
    listener: TcpListener,
    app: axum::Router,
    cert: &Path,
    key: &Path,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ServerError> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    let std_listener = listener
        .into_std()
        .map_err(|e| ServerError::Tls(format!("listener: {e}")))?;
    let handle = axum_server::Handle::new();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        let _ = shutdown.changed().await;
        shutdown_handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let server = axum_server::from_tcp_rustls(std_listener, tls)
        .map_err(|e| ServerError::Tls(format!("listener: {e}")))?
        .handle(handle);
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            warn!(error = %e, "HTTPS server failed");
        }
    }))
}
