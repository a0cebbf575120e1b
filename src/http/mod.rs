//! The HTTP front: signaling WebSocket, the browser client, metrics and health probes.

pub mod api;
pub mod assets;
pub mod penalty;
pub mod resume;
pub mod serve;
pub mod whip;
pub mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State, WebSocketUpgrade};
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
    /// Caps simultaneous WebSockets.
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

/// Read buffer of a signaling WebSocket (it grows for a larger frame, up to the frame limit).
const SIGNALING_BUFFER_BYTES: usize = 8 * 1024;

async fn websocket(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|axum::Extension(info)| info.0.ip());
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
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    if state.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    upgrade
        // Frames above the protocol limit still reach the parser, which answers with an error
        // frame; only absurd sizes are cut off by the WebSocket layer.
        .max_message_size(MAX_FRAME_BYTES * 4)
        // Signaling frames are small (SDP is the largest, a few KiB): tungstenite's default
        // 128 KiB read and write buffers per socket would be most of a participant's memory.
        .read_buffer_size(SIGNALING_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            ws::serve(socket, state.session.clone(), peer).await;
            drop(permit);
        })
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
