//! One signaling WebSocket session: parses client frames, forwards them to the media task and
//! writes the media task's messages back.
//!
//! Every refused frame gets a typed `error` frame, a log line (without personal data) and a
//! count in `huizhen_signaling_errors_total{code}`; the socket and the room stay up.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use huizhen_signaling::protocol::{
    parse_client_message, ClientMessage, ErrorCode, ServerMessage,
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::edge::{MediaCommand, MediaHandle, SIGNAL_QUEUE};
use crate::redact::Redacted;
use crate::sfu::{LeaveReason, ParticipantId, SignalInput};

/// Signaling metrics (`huizhen_signaling_` registry).
#[derive(Clone)]
pub struct SignalingMetrics {
    /// Open WebSocket sessions.
    pub connections: IntGauge,
    /// Frames received, by message type (unknown types count as `invalid`).
    pub messages: IntCounterVec,
    /// Error frames sent, by code.
    pub errors: IntCounterVec,
}

impl SignalingMetrics {
    /// Create and register.
    pub fn new(registry: &Registry) -> SignalingMetrics {
        let connections = IntGauge::new("connections", "Open signaling WebSockets").expect("metric");
        let messages = IntCounterVec::new(
            Opts::new("messages_received_total", "Signaling frames received, by type"),
            &["type"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Signaling error frames sent, by code"),
            &["code"],
        )
        .expect("metric");
        registry.register(Box::new(connections.clone())).expect("metric");
        registry.register(Box::new(messages.clone())).expect("metric");
        registry.register(Box::new(errors.clone())).expect("metric");
        for code in ErrorCode::ALL {
            errors.with_label_values(&[code.as_str()]);
        }
        for kind in ["join", "offer", "answer", "candidate", "leave", "ping", "invalid"] {
            messages.with_label_values(&[kind]);
        }
        SignalingMetrics {
            connections,
            messages,
            errors,
        }
    }
}

struct Session {
    media: MediaHandle,
    metrics: SignalingMetrics,
    events_tx: mpsc::Sender<ServerMessage>,
    participant: Option<ParticipantId>,
}

/// What to do after a client frame.
enum Next {
    Continue,
    Reply(ServerMessage),
    Close,
}

/// Serve one WebSocket until either side ends it.
pub async fn serve(socket: WebSocket, media: MediaHandle, metrics: SignalingMetrics) {
    metrics.connections.inc();
    let (mut sink, mut stream) = socket.split();
    let (events_tx, mut events) = mpsc::channel(SIGNAL_QUEUE);
    let mut session = Session {
        media,
        metrics: metrics.clone(),
        events_tx,
        participant: None,
    };
    loop {
        tokio::select! {
            // Server messages first: replies to a frame must not overtake what the media task
            // queued before it (e.g. `joined`).
            biased;
            event = events.recv() => {
                let Some(message) = event else { break };
                let bye = matches!(message, ServerMessage::Bye { .. });
                if send(&mut sink, &metrics, &message).await.is_err() || bye {
                    if bye {
                        session.participant = None;
                    }
                    break;
                }
            }
            frame = stream.next() => {
                let next = match frame {
                    Some(Ok(Message::Text(text))) => session.on_text(&text).await,
                    Some(Ok(Message::Binary(_))) => Next::Reply(session.error(
                        ErrorCode::BadJson,
                        "binary frames are not supported; send JSON text frames".into(),
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Next::Close,
                };
                match next {
                    Next::Continue => {}
                    Next::Reply(message) => {
                        if send(&mut sink, &metrics, &message).await.is_err() {
                            break;
                        }
                    }
                    Next::Close => break,
                }
            }
        }
    }
    if let Some(participant) = session.participant.take() {
        let _ = session
            .media
            .send(MediaCommand::Leave {
                participant,
                reason: LeaveReason::SignalingClosed,
            })
            .await;
    }
    let _ = sink.send(Message::Close(None)).await;
    metrics.connections.dec();
}

/// Write one message; every error frame, whoever produced it, is counted here.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    metrics: &SignalingMetrics,
    message: &ServerMessage,
) -> Result<(), axum::Error> {
    if let ServerMessage::Error { code, .. } = message {
        metrics.errors.with_label_values(&[code.as_str()]).inc();
    }
    sink.send(Message::Text(Utf8Bytes::from(message.to_json()))).await
}

impl Session {
    fn error(&self, code: ErrorCode, message: String) -> ServerMessage {
        debug!(code = code.as_str(), "signaling error");
        ServerMessage::error(code, message)
    }

    async fn on_text(&mut self, text: &str) -> Next {
        let message = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.messages.with_label_values(&["invalid"]).inc();
                return Next::Reply(self.error(e.code(), e.to_string()));
            }
        };
        self.metrics
            .messages
            .with_label_values(&[message_type(&message)])
            .inc();
        match (message, self.participant) {
            (ClientMessage::Ping {}, _) => Next::Reply(ServerMessage::Pong {}),
            (ClientMessage::Join { .. }, Some(_)) => Next::Reply(self.error(
                ErrorCode::AlreadyJoined,
                "this socket has already joined a room; open a new socket to join another".into(),
            )),
            (
                ClientMessage::Join {
                    room, display_name, ..
                },
                None,
            ) => self.join(room, display_name).await,
            (_, None) => Next::Reply(self.error(
                ErrorCode::NotJoined,
                "send join before any other message".into(),
            )),
            (ClientMessage::Leave {}, Some(participant)) => {
                let _ = self
                    .media
                    .send(MediaCommand::Leave {
                        participant,
                        reason: LeaveReason::Left,
                    })
                    .await;
                // The media task answers with `bye`, which ends the session.
                Next::Continue
            }
            (ClientMessage::Offer { sdp }, Some(p)) => self.signal(p, SignalInput::Offer(sdp)).await,
            (ClientMessage::Answer { sdp }, Some(p)) => {
                self.signal(p, SignalInput::Answer(sdp)).await
            }
            (ClientMessage::Candidate { candidate, .. }, Some(p)) => {
                self.signal(p, SignalInput::Candidate(candidate)).await
            }
        }
    }

    async fn join(&mut self, room: String, display_name: String) -> Next {
        info!(room = %Redacted(&room), display_name = %Redacted(&display_name), "join requested");
        match self
            .media
            .join(room, display_name, self.events_tx.clone())
            .await
        {
            Ok(Ok(id)) => {
                self.participant = Some(id);
                Next::Continue
            }
            Ok(Err(e)) => Next::Reply(self.error(e.code(), e.to_string())),
            Err(_) => {
                let reply = self.error(ErrorCode::Unavailable, "the server is shutting down".into());
                Next::Reply(reply)
            }
        }
    }

    async fn signal(&mut self, participant: ParticipantId, input: SignalInput) -> Next {
        match self
            .media
            .send(MediaCommand::Signal { participant, input })
            .await
        {
            Ok(()) => Next::Continue,
            Err(_) => Next::Reply(
                self.error(ErrorCode::Unavailable, "the server is shutting down".into()),
            ),
        }
    }
}

fn message_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Leave {} => "leave",
        ClientMessage::Ping {} => "ping",
    }
}
