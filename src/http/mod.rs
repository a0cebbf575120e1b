//! The HTTP front: signaling WebSocket, the browser client, metrics and health probes.

/// `AsyncWrite` for a wrapper `$ty<S>` whose `inner: S` does the writing: the wrappers of this
/// module (`serve::Admitted`, `serve::Prefixed`, `ws_guard::StrangerGuard`) watch only reads.
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use delegate_async_write;

pub mod api;
pub mod assets;
pub mod penalty;
pub mod resume;
pub mod serve;
pub mod whip;
pub mod ws;
pub mod ws_guard;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use huizhen_signaling::protocol::MAX_FRAME_BYTES;
use tokio::sync::Semaphore;

use crate::telemetry::Metrics;
use ws::SessionDeps;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// What signaling sessions need.
    pub session: SessionDeps,
    /// The REST API.
    pub api: api::ApiState,
    /// All metric registries.
    pub metrics: Metrics,
    /// Caps simultaneous trusted WebSockets (authenticated, joined or resumed); strangers
    /// count only against the HTTP connection caps, so that they cannot keep a doctor out.
    pub connections: Arc<Semaphore>,
    /// Set when shutdown starts: `/readyz` turns 503 so load balancers drain.
    pub draining: Arc<AtomicBool>,
    /// Open WHIP and WHEP sessions.
    pub whip: Arc<whip::Sessions>,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let api = api::router(state.api.clone());
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/room/demo") }))
        .route("/ws", get(websocket))
        .route("/room/{name}", get(room_page))
        .route("/watch/{name}", get(watch_page))
        .route("/static/{file}", get(static_file))
        .route("/patient", get(|| clinic_page("patient")))
        .route("/doctor", get(|| clinic_page("doctor")))
        .route("/expert", get(|| clinic_page("expert")))
        .route("/companion", get(|| clinic_page("companion")))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(whip::router())
        .with_state(state)
        .nest("/api/v1", api)
}

/// Read buffer of a signaling WebSocket: most frames are small, a larger one (an SDP offer)
/// has its length reserved when its header is read (after authentication, up to the frame
/// limit). 1 KiB of every idle socket's ~6 KiB (README, "What strangers cost").
const SIGNALING_BUFFER_BYTES: usize = 1024;

/// `GET /ws`: the signaling WebSocket. The upgrade is done here rather than by axum's
/// extractor so that the connection passes a [`ws_guard::StrangerGuard`] before tungstenite
/// reads it (what a stranger may make the server hold).
async fn websocket(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    mut request: axum::extract::Request,
) -> Response {
    let peer = peer.map(|axum::Extension(info)| info.0.ip());
    let accept = match upgrade_accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(response) => return response,
    };
    if let Some(ip) = peer {
        let blocked = state
            .session
            .penalties
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_blocked(std::time::Instant::now(), ip);
        if blocked {
            // Cheap: no WebSocket, no task. Counted (and audited once per source and minute).
            state.session.metrics.blocked_upgrades.inc();
            let _ = state
                .session
                .clinic
                .send(crate::clinic::ClinicRequest::Refused(
                    crate::clinic::refusals::Refused {
                        kind: "refused",
                        actor: None,
                        subject: None,
                        command: "upgrade".into(),
                        code: huizhen_signaling::protocol::ErrorCode::TooManyRefusals.as_str(),
                        source: Some(state.session.sources.source(ip)),
                        claimed_user: None,
                        reason:
                            "this source's sockets were closed for refusals too often; retry later"
                                .into(),
                    },
                ))
                .await;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many refused connections from this address; retry later",
            )
                .into_response();
        }
    }
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        )
            .into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let trust = ws_guard::Trust::default();
        let io =
            ws_guard::StrangerGuard::new(hyper_util::rt::TokioIo::new(upgraded), trust.clone());
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            // Frames above the protocol limit still reach the parser, which answers with an
            // error frame; only absurd sizes are cut off by the WebSocket layer.
            .max_message_size(Some(MAX_FRAME_BYTES * 4))
            .max_frame_size(Some(MAX_FRAME_BYTES * 4))
            // Signaling frames are small (SDP is the largest, a few KiB): tungstenite's
            // default 128 KiB read and write buffers per socket would be most of a
            // participant's memory.
            .read_buffer_size(SIGNALING_BUFFER_BYTES)
            .write_buffer_size(0);
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(config),
        )
        .await;
        ws::serve(
            socket,
            state.session.clone(),
            peer,
            trust,
            state.connections,
        )
        .await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The `Sec-WebSocket-Accept` of a valid WebSocket upgrade request (RFC 6455 §4.2.1), or the
/// answer to an invalid one.
fn upgrade_accept_key(headers: &header::HeaderMap) -> Result<String, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "signaling needs a WebSocket upgrade",
        )
            .into_response());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 only",
        )
            .into_response());
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key").into_response());
    };
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

async fn room_page(Path(_name): Path<String>) -> Html<&'static str> {
    Html(assets::ROOM_HTML)
}

/// The WHEP player of a room (`static/watch.html`; a consultation and token may come in the
/// query string, read by the page's script).
async fn watch_page(Path(_name): Path<String>) -> Response {
    clinic_page("watch").await
}

/// A clinic page (the token travels in the query string and is read by the page's script).
async fn clinic_page(name: &'static str) -> Response {
    match assets::page(name) {
        Some(body) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                // Tokens are in the URL: never leak them in Referer headers.
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn static_file(Path(file): Path<String>) -> Response {
    match assets::find(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.session.media.is_alive() && !state.draining.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}
