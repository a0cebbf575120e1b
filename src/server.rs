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

use crate::auth::{AuthConfig, TokenMinter, TokenVerifier};
use crate::clinic::ClinicParts;
use crate::config::Config;
use crate::edge::{self, LocalAddress, MediaHandle, MediaTask};
use crate::http::api::ApiState;
use crate::http::ws::SessionDeps;
use crate::http::{self, ws::SignalingMetrics, AppState};
use crate::sfu::{Sfu, SfuConfig, SfuMetrics};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::webhook::Webhooks;
use huizhen_signaling::clinic::ClinicEngine;

/// How long shutdown waits for sessions to finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// An HTTP connection (a WebSocket too) from which nothing is read this long is closed: twice
/// the longest ping interval the protocol asks of clients (30 s).
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// A configured value is unusable (read at start-up, e.g. a secret file's content).
    #[error("{field}: {message}")]
    Config {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong (never the secret).
        message: String,
    },
    /// The database could not be opened or read.
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Token keys could not be loaded.
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// A secret file could not be read.
    #[error("cannot read {path}: {source}")]
    SecretFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Webhooks could not start.
    #[error("webhooks: {0}")]
    Webhook(#[from] crate::webhook::WebhookError),
    /// The archive store or spool could not be opened.
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The recording key-encryption key could not be loaded.
    #[error("recording key: {0}")]
    RecordingKey(#[from] crate::vault::KeyError),
    /// The manifest signing key could not be loaded.
    #[error("recording signing key: {0}")]
    SigningKey(#[from] crate::vault::SigningKeyError),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What development mode generated, for printing at start.
#[derive(Debug, Clone)]
pub struct DevInfo {
    /// Demo links (doctor, patient, companion).
    pub links: crate::clinic::dev::DemoLinks,
    /// The API key, when it was generated rather than configured.
    pub generated_api_key: Option<String>,
}

/// A running server.
pub struct ServerHandle {
    http_addr: SocketAddr,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    turn: TurnAddrs,
    tls: bool,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    media: MediaHandle,
    metrics: Metrics,
    dev: Option<DevInfo>,
    minter: Arc<TokenMinter>,
    api_key: String,
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
    /// Bound TURN listeners (all `None` when TURN is off).
    pub fn turn_addrs(&self) -> TurnAddrs {
        self.turn
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
    /// Development mode's demo links and generated key.
    pub fn dev_info(&self) -> Option<&DevInfo> {
        self.dev.as_ref()
    }
    /// Mints tokens with the server's key (tests, the CLI, expert links).
    pub fn minter(&self) -> &TokenMinter {
        &self.minter
    }
    /// The REST API key in force.
    pub fn api_key(&self) -> &str {
        &self.api_key
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

async fn bind_udp(what: &'static str, addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })?;
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
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Bind everything and start serving.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut metrics = Metrics::new();
    let sfu_metrics = SfuMetrics::new(&metrics.component("sfu"));
    let signaling = SignalingMetrics::new(&metrics.component("signaling"));

    let udp = bind_udp("media UDP", config.media.udp_listen).await?;
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

    let store = open_store(&config)?;
    let (auth, generated_secret) = resolve_auth(&config, &store)?;
    let (api_key, generated_api_key) = resolve_api_key(&config, &store)?;
    let verifier = Arc::new(TokenVerifier::new(&auth)?);
    let minter = Arc::new(TokenMinter::new(&auth)?);
    if generated_secret {
        warn!("auth: no token key configured; using a generated development secret (tokens from a hospital system will not verify)");
    }
    // Rooms by name: on in development unless configured, off in production unless configured.
    let open_rooms = config.signaling.open_rooms.unwrap_or(generated_secret);
    match (config.signaling.open_rooms, open_rooms) {
        (None, true) => warn!("development mode: open rooms are on (anyone may join a room by name; signaling.open_rooms = false turns them off)"),
        (Some(true), _) => info!("open rooms are on (signaling.open_rooms): anyone may join a room by name"),
        _ => info!("open rooms are off: calls go through the clinic (signaling.open_rooms)"),
    }

    let sfu_config = sfu_config(&config, udp_addr, tcp_addr);
    let turn = start_turn(
        &config,
        &mut metrics,
        sfu_config.udp_candidates.clone(),
        sfu_config.tcp_candidates.clone(),
        &public_url(&config, http_addr),
    )
    .await?;
    let turn_addrs = turn.as_ref().map(|t| t.addrs).unwrap_or_default();
    let sfu = Sfu::new(sfu_config, sfu_metrics);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let webhooks = Webhooks::spawn(
        config.webhook.clone(),
        &metrics.component("webhook"),
        shutdown_rx.clone(),
    )?;
    let (recorder, keyframe_wants, recorder_task) =
        start_recorder(&config, &mut metrics, webhooks.clone(), shutdown_rx.clone()).await?;
    let local = LocalAddress {
        announce: config.media.announce.clone(),
    };
    let (turn_edge, turn_listeners, turn_grants) = match turn {
        Some(t) => (Some(t.edge), t.listeners, Some(t.grants)),
        None => (None, Vec::new(), None),
    };
    let (media, media_task) = edge::spawn(
        MediaTask {
            sfu,
            udp,
            local,
            recorder: Some(recorder.clone()),
            keyframe_wants: Some(keyframe_wants),
            turn: turn_edge,
        },
        shutdown_rx.clone(),
    );
    let mut tasks = Vec::new();
    for (listener, tls, limits, metrics) in turn_listeners {
        tasks.push(tokio::spawn(edge::turn::run_listener(
            listener,
            tls,
            media.clone(),
            limits,
            metrics,
            shutdown_rx.clone(),
        )));
    }
    if let Some(listener) = ice_tcp {
        tasks.push(tokio::spawn(edge::ice_tcp::run(
            listener,
            media.clone(),
            config.media.tcp_queue_frames,
            shutdown_rx.clone(),
        )));
    }
    let now = crate::clinic::now_ms();
    let settings = config.clinic.settings();
    let horizon = settings.history_horizon_ms;
    let snapshot = crate::clinic::blocking(|| store.load_live(now, horizon))?;
    let revocations = crate::clinic::blocking(|| store.revocations(now.0 / 1000))?;
    let mut engine = ClinicEngine::from_snapshot(settings, snapshot, now);
    let sources = source_hasher(&store)?;
    let base_url = public_url(&config, http_addr);
    let dev = if config.clinic.seed_demo {
        let appointment = crate::clinic::dev::seed(&mut engine, now);
        let links = crate::clinic::dev::links(&minter, &base_url, now.0 / 1000, &appointment)
            .map_err(|e| ServerError::Tls(format!("cannot mint demo tokens: {e}")))?;
        Some(DevInfo {
            links,
            generated_api_key: generated_api_key.then(|| api_key.clone()),
        })
    } else {
        None
    };
    // What start-up changed (a restart's grace marks, the demo seed) is on disk before the
    // server answers anyone: the clinic task wrote it at its start, and a REST read right
    // after start could find no demo appointment yet (a browser test, 1 run in many).
    let changes = engine.take_changes();
    if !changes.is_empty() {
        crate::clinic::blocking(|| store.commit(&changes, &[], &[]))?;
    }
    let (clinic, clinic_task) = crate::clinic::spawn(
        ClinicParts {
            engine,
            store: Arc::new(store.clone()),
            minter: minter.clone(),
            media: media.clone(),
            webhooks,
            recorder,
            revocations,
            registry: metrics.component("clinic"),
        },
        shutdown_rx.clone(),
    );
    let gate = http::serve::Gate::new(
        http::serve::ConnLimits {
            max_connections: config.http.max_http_connections,
            max_connections_per_source: config.http.max_connections_per_source,
            header_read_timeout: Duration::from_secs(config.http.header_read_timeout_seconds),
            tls_handshake_timeout: Duration::from_secs(config.http.header_read_timeout_seconds),
            idle_timeout: HTTP_IDLE_TIMEOUT,
        },
        http::serve::HttpMetrics::new(&metrics.component("http")),
    );
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        session: SessionDeps {
            media: media.clone(),
            clinic: clinic.clone(),
            verifier,
            metrics: signaling,
            open_rooms,
            sources: sources.clone(),
            penalties: Arc::new(std::sync::Mutex::new(http::penalty::PenaltyBox::new(
                PENALTY_WINDOW,
                PENALTY_THRESHOLD,
                PENALTY_BLOCK,
                PENALTY_SOURCES,
            ))),
            turn: turn_grants,
            resumes: Arc::new(std::sync::Mutex::new(http::resume::ResumeRegistry::new(
                config.signaling.resume_grace(),
            ))),
        },
        metrics: metrics.clone(),
        connections: Arc::new(Semaphore::new(config.http.max_connections)),
        draining: draining.clone(),
        whip: Default::default(),
        api: ApiState {
            clinic,
            minter: minter.clone(),
            key: api_key.clone(),
            store: store.clone(),
            sources,
            media: media.clone(),
        },
    };
    let app = http::router(state);
    let tls = config.http.tls_cert.is_some();
    let http_tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, &[b"h2", b"http/1.1"])?),
        _ => {
            warn!(
                "no TLS certificate configured: serving plain HTTP (local-only mode; browsers \
                 allow camera access only on localhost without TLS)"
            );
            None
        }
    };
    let http_task = spawn_http(http_listener, http_tls, app, gate, shutdown_rx.clone());
    // The media task stops last so that sessions still get their `bye`.
    tasks.insert(0, http_task);
    tasks.push(clinic_task);
    tasks.push(media_task);
    // Last: archives what the others handed it, signing manifests of cut-short recordings.
    tasks.push(recorder_task);
    info!(%http_addr, %udp_addr, tcp = ?tcp_addr, tls, "huizhen listening");
    Ok(ServerHandle {
        http_addr,
        udp_addr,
        tcp_addr,
        turn: turn_addrs,
        tls,
        shutdown: shutdown_tx,
        draining,
        tasks,
        media,
        metrics,
        dev,
        minter,
        api_key,
    })
}

/// The recorder: archive store behind a spool, key-encryption key, signing key, task.
async fn start_recorder(
    config: &Config,
    metrics: &mut Metrics,
    webhooks: crate::webhook::WebhookHandle,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        crate::recorder::task::RecorderHandle,
        crate::recorder::task::KeyframeWants,
        JoinHandle<()>,
    ),
    ServerError,
> {
    let data_dir = &config.storage.data_dir;
    let store = crate::archive::build_store(&config.archive)?;
    let spool = crate::archive::Spool::open(
        config
            .archive
            .spool_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("spool")),
        store.clone(),
        &metrics.component("archive"),
        shutdown.clone(),
    )
    .await?;
    let kek = match config.recording.load_kek()? {
        Some(kek) => kek,
        None => {
            let path = data_dir.join("recording-kek");
            warn!(
                path = %path.display(),
                "recording: no key-encryption key configured; using a generated development key \
                 (keep it apart from the archive; configure recording.kek_file in production)"
            );
            crate::vault::LocalKek::load_or_generate_file(&path)?
        }
    };
    let signer =
        crate::vault::load_or_generate_signing_key(&config.recording.signing_key_path(data_dir))?;
    let journal_dir = data_dir.join("recordings-journal");
    crate::recorder::task::spawn(
        crate::recorder::task::RecorderParts {
            config: config.recorder.clone(),
            cipher: config.recording.cipher,
            chunk_bytes: config.recording.chunk_bytes,
            kek: Arc::new(kek),
            signer,
            spool,
            journal_dir: journal_dir.clone(),
            store,
            webhooks,
            shutdown: shutdown.clone(),
            registry: metrics.component("recorder"),
        },
        shutdown,
    )
    .await
    .map_err(|source| ServerError::Dir {
        path: journal_dir,
        source,
    })
}

fn open_store(config: &Config) -> Result<Store, ServerError> {
    let path = config.storage.data_dir.join("huizhen.db");
    Ok(Store::open(&path)?)
}

/// The auth config in force: in development (no key configured) a secret generated once and
/// kept in the database, so printed links survive restarts. Returns whether it was generated.
pub fn resolve_auth(config: &Config, store: &Store) -> Result<(AuthConfig, bool), ServerError> {
    let mut auth = config.auth.clone();
    if !auth.is_dev_mode() {
        return Ok((auth, false));
    }
    let secret = match store.get_meta(DEV_SECRET_KEY)? {
        Some(secret) => secret,
        None => {
            let secret = crate::auth::generate_dev_secret();
            store.set_meta(DEV_SECRET_KEY, &secret)?;
            secret
        }
    };
    auth.hs256_secret = Some(secret);
    Ok((auth, true))
}

/// A source with this many sockets closed for refusals within the window is refused WebSocket
/// upgrades for the block time ([`http::penalty`]).
const PENALTY_THRESHOLD: u32 = 20;
/// See [`PENALTY_THRESHOLD`].
const PENALTY_WINDOW: Duration = Duration::from_secs(10);
/// See [`PENALTY_THRESHOLD`].
const PENALTY_BLOCK: Duration = Duration::from_secs(30);
/// Most sources the penalty box tracks at once.
const PENALTY_SOURCES: usize = 10_000;

/// The key of the audit trail's source hashes: generated once and kept in the database, so a
/// source hashes the same across restarts (and the address cannot be recovered without it).
fn source_hasher(store: &Store) -> Result<crate::audit::source::SourceHasher, ServerError> {
    const KEY: &str = "audit_source_key";
    let key = match store.get_meta(KEY)? {
        Some(key) => key,
        None => {
            let key = crate::auth::generate_dev_secret();
            store.set_meta(KEY, &key)?;
            key
        }
    };
    Ok(crate::audit::source::SourceHasher::new(key.as_bytes()))
}

/// The API key: configured, from a file, or generated once and kept in the database.
fn resolve_api_key(config: &Config, store: &Store) -> Result<(String, bool), ServerError> {
    if let Some(path) = &config.api.key_file {
        let key = std::fs::read_to_string(path).map_err(|source| ServerError::SecretFile {
            path: path.clone(),
            source,
        })?;
        return Ok((key.trim_end_matches(['\r', '\n']).to_owned(), false));
    }
    if let Some(key) = &config.api.key {
        return Ok((key.clone(), false));
    }
    let key = match store.get_meta(DEV_API_KEY)? {
        Some(key) => key,
        None => {
            let key = crate::auth::generate_dev_secret();
            store.set_meta(DEV_API_KEY, &key)?;
            key
        }
    };
    Ok((key, true))
}

/// The database meta key of the development token secret (see [`resolve_auth`]).
pub const DEV_SECRET_KEY: &str = "dev_hs256_secret";
const DEV_API_KEY: &str = "dev_api_key";

/// Base URL for printed links.
fn public_url(config: &Config, http: SocketAddr) -> String {
    if let Some(url) = &config.signaling.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if config.http.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if http.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), http.port())
    } else {
        http
    };
    format!("{scheme}://{host}")
}

/// The bound TURN listeners.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnAddrs {
    /// TURN over UDP.
    pub udp: Option<SocketAddr>,
    /// TURN over TCP.
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS.
    pub tls: Option<SocketAddr>,
}

type TurnListener = (
    TcpListener,
    Option<edge::turn::TlsAcceptor>,
    edge::turn::StreamLimits,
    crate::turn::TurnMetrics,
);

struct TurnParts {
    edge: edge::turn::TurnEdge,
    listeners: Vec<TurnListener>,
    grants: Arc<crate::turn::TurnGrants>,
    addrs: TurnAddrs,
}

/// Bind the TURN listeners and build its core; `None` when TURN is off (or has no UDP media
/// address to relay to).
async fn start_turn(
    config: &Config,
    metrics: &mut Metrics,
    peers: Vec<SocketAddr>,
    tcp_peers: Vec<SocketAddr>,
    base_url: &str,
) -> Result<Option<TurnParts>, ServerError> {
    let t = &config.turn;
    if !t.enabled {
        return Ok(None);
    }
    if peers.is_empty() {
        warn!("turn: media.announce_udp is false, so there is no UDP media address to relay to; TURN is off");
        return Ok(None);
    }
    let turn_metrics = crate::turn::TurnMetrics::new(&metrics.component("turn"));
    use crate::turn::config::TurnTransport;
    let udp = match t.listen(TurnTransport::Udp) {
        Some(addr) => Some(bind_udp("TURN UDP", addr).await?),
        None => None,
    };
    let tcp = match t.listen(TurnTransport::Tcp) {
        Some(addr) => Some(bind_tcp("TURN TCP", addr).await?),
        None => None,
    };
    let tls = match t.listen(TurnTransport::Tls) {
        Some(addr) => {
            let cert = t.tls_cert.as_ref().or(config.http.tls_cert.as_ref());
            let key = t.tls_key.as_ref().or(config.http.tls_key.as_ref());
            let (Some(cert), Some(key)) = (cert, key) else {
                return Err(ServerError::Tls("turn: tls needs a certificate".into()));
            };
            let acceptor = tls_acceptor(cert, key, &[])?;
            Some((bind_tcp("TURN TLS", addr).await?, acceptor))
        }
        None => None,
    };
    let addrs = TurnAddrs {
        udp: udp.as_ref().and_then(|u| u.local_addr().ok()),
        tcp: tcp.as_ref().and_then(|l| l.local_addr().ok()),
        tls: tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
    };
    let tls_host = t.tls_host.clone().or_else(|| {
        base_url
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or("").to_owned())
            .filter(|h| !h.is_empty())
    });
    let urls = crate::turn::urls(
        &config.media.announce,
        addrs.udp.map(|a| a.port()),
        addrs.tcp.map(|a| a.port()),
        match (&tls_host, addrs.tls) {
            (Some(host), Some(a)) => Some((host.as_str(), a.port())),
            _ => None,
        },
    );
    let secret = match &t.secret_file {
        None => crate::turn::TurnSecret::random(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ServerError::SecretFile {
                path: path.clone(),
                source,
            })?;
            let text = text.trim();
            if text.len() < crate::auth::config::MIN_HS256_SECRET_BYTES {
                return Err(ServerError::Config {
                    field: "turn.secret_file",
                    message: format!(
                        "{}: the secret must be at least {} bytes",
                        path.display(),
                        crate::auth::config::MIN_HS256_SECRET_BYTES
                    ),
                });
            }
            crate::turn::TurnSecret::new(text.as_bytes())
        }
    };
    let now = std::time::Instant::now();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut core = crate::turn::TurnServer::new(
        crate::turn::server::TurnCoreConfig {
            realm: t.realm.clone(),
            max_allocations: t.max_allocations,
            max_allocations_per_credential: t.max_allocations_per_credential,
        },
        secret.clone(),
        peers,
        Box::new(crate::turn::server::BoundRelayPorts::new(
            config.media.announce.clone(),
        )),
        turn_metrics.clone(),
        now,
        now_unix,
    );
    // TCP allocations (RFC 6062) reach the SFU's ICE-TCP port.
    core.set_tcp_peers(tcp_peers);
    let limits = edge::turn::StreamLimits {
        open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        max_connections: t.max_connections,
        queue: t.queue_frames,
    };
    let mut listeners = Vec::new();
    if let Some(l) = tcp {
        listeners.push((l, None, limits.clone(), turn_metrics.clone()));
    }
    if let Some((l, acceptor)) = tls {
        listeners.push((l, Some(acceptor), limits.clone(), turn_metrics.clone()));
    }
    info!(udp = ?addrs.udp, tcp = ?addrs.tcp, tls = ?addrs.tls, "turn server running");
    Ok(Some(TurnParts {
        edge: edge::turn::TurnEdge::new(core, udp, turn_metrics),
        listeners,
        grants: Arc::new(crate::turn::TurnGrants::new(
            secret,
            t.credential_ttl_seconds,
            urls,
        )),
        addrs,
    }))
}

/// A rustls acceptor from PEM files (HTTPS, TURN over TLS); `alpn`: the protocols offered.
fn tls_acceptor(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<edge::turn::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

fn sfu_config(config: &Config, udp: SocketAddr, tcp: Option<SocketAddr>) -> SfuConfig {
    let m = &config.media;
    let udp_candidates = if m.announce_udp {
        m.announce
            .iter()
            .map(|ip| SocketAddr::new(*ip, udp.port()))
            .collect()
    } else {
        Vec::new()
    };
    let tcp_candidates = match tcp {
        Some(tcp) if m.announce_tcp => m
            .announce
            .iter()
            .map(|ip| SocketAddr::new(*ip, tcp.port()))
            .collect(),
        _ => Vec::new(),
    };
    SfuConfig {
        udp_candidates,
        tcp_candidates,
        max_participants_per_room: m.max_participants_per_room,
        max_viewers_per_room: m.max_viewers_per_room,
        max_participants: m.max_participants,
        keyframe_throttle: m.keyframe_throttle(),
        retransmit_history: m.retransmit_history(),
        peer_timeout: m.peer_timeout(),
        connect_timeout: m.connect_timeout(),
        resume_grace: config.signaling.resume_grace(),
    }
}

fn spawn_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    gate: Arc<http::serve::Gate>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(http::serve::serve(
        listener,
        tls,
        app,
        gate,
        shutdown,
        SHUTDOWN_GRACE,
    ))
}
