//! A simulated participant speaking huizhen's signaling protocol v1 (`/ws`, see
//! `signaling/PROTOCOL.md`): join a room, offer what it publishes, answer the server's
//! renegotiations, follow `publish_layers`, leave. A relayed participant takes the TURN server
//! over UDP and the credential of `joined.ice_servers` and connects through it only.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use huizhen_signaling::protocol::{ClientMessage, IceServer, ServerMessage, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ClientError, Wake, WsStream};
use crate::link::LinkConfig;
use crate::media::MediaPlan;
use crate::peer::{Peer, RelayConfig, Shared};
use crate::scenario::ParticipantSpec;

/// Most datagrams read per wake-up.
pub const BURST: usize = 64;

/// How long the server may take to answer `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a participant pings its signaling socket, as the pages do: the server closes a
/// socket it has read nothing from for 60 s (`http.idle_timeout`), and a participant that only
/// sends media says nothing on its socket after the offer.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// What a participant sends (if it publishes) and the link it receives through.
#[derive(Debug, Clone)]
pub struct ParticipantMedia {
    /// Its media, when it publishes.
    pub plan: MediaPlan,
    /// Its capped downlink, if it is behind one.
    pub downlink: Option<LinkConfig>,
    /// It connects through the server's TURN (over UDP, relay-only ICE).
    pub relay: bool,
}

/// Runs one participant until `stop` says so (or it fails).
pub async fn participant(
    url: String,
    room: String,
    spec: ParticipantSpec,
    media: ParticipantMedia,
    ip: IpAddr,
    shared: Rc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let ParticipantMedia {
        mut plan,
        downlink,
        relay,
    } = media;
    let started = Instant::now();
    let mut ws = crate::client::connect(url.as_str()).await?;
    send(
        &mut ws,
        &ClientMessage::Join {
            v: PROTOCOL_VERSION,
            room,
            display_name: format!("load-{}", spec.index),
            token: None,
        },
    )
    .await?;
    let (simulcast, ice_servers) = tokio::time::timeout(JOIN_TIMEOUT, wait_joined(&mut ws))
        .await
        .map_err(|_| ClientError::Timeout("joined"))??;
    if !simulcast && !plan.simulcast.is_empty() {
        // A server without simulcast (`joined.simulcast` absent or false): one layer, as the
        // browser client does.
        tracing::debug!("the server does not take simulcast: publishing one layer");
        plan.simulcast.clear();
    }

    let relay = if relay {
        Some(relay_config(&ice_servers)?)
    } else {
        None
    };
    let mut peer = Peer::bind(ip, spec.index, shared.clone(), relay).await?;
    if let Some(link) = downlink {
        peer.set_downlink(link);
    }
    let offer = peer.offer(spec.publishes.then_some(plan), &[]);
    send(
        &mut ws,
        &ClientMessage::Offer {
            sdp: offer,
            sources: Default::default(),
            renew: false,
        },
    )
    .await?;

    let mut buf = vec![0u8; 2048];
    let mut join_recorded = false;
    let sleep = tokio::time::sleep_until(peer.next_wake().into());
    tokio::pin!(sleep);
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let result = loop {
        let wake = tokio::time::Instant::from_std(peer.next_wake());
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        let event = tokio::select! {
            r = peer.socket().recv_from(&mut buf) => match r {
                Ok((n, source)) => Wake::Datagram(0, n, source),
                Err(_) => Wake::Timer,
            },
            m = ws.next() => Wake::Signal(m),
            _ = &mut sleep => Wake::Timer,
            _ = ping.tick() => Wake::Ping,
            _ = stop.changed() => Wake::Stop,
        };
        match event {
            Wake::Datagram(_, n, source) => {
                peer.on_datagram(Instant::now(), source, &buf[..n]);
                peer.read_ready(&mut buf, BURST);
            }
            Wake::Signal(Some(Ok(Message::Text(text)))) => {
                if let Err(e) = on_signal(&mut ws, &mut peer, &text).await {
                    break Err(e);
                }
            }
            Wake::Signal(Some(Ok(Message::Close(_))) | None) => break Err(ClientError::Closed),
            Wake::Signal(Some(Err(e))) => break Err(ClientError::Connect(e.to_string())),
            Wake::Ping => {
                if let Err(e) = send(&mut ws, &ClientMessage::Ping {}).await {
                    break Err(e);
                }
            }
            Wake::Signal(Some(Ok(_))) | Wake::Timer => {}
            Wake::Stop => break Ok(()),
        }
        peer.tick(Instant::now());
        if !join_recorded {
            if let Some(at) = peer.first_media {
                shared
                    .rx
                    .borrow_mut()
                    .on_joined(at.duration_since(started).as_millis() as u64);
                join_recorded = true;
            }
        }
        if peer.failed {
            break Err(ClientError::MediaFailed);
        }
    };
    if result.is_ok() {
        let _ = send(&mut ws, &ClientMessage::Leave {}).await;
        let _ = ws.close(None).await;
    }
    peer.close();
    result
}

/// The first TURN server over UDP of `joined.ice_servers`, with its credential (TCP and TLS
/// URLs are left out: the generator's relayed participants use TURN over UDP).
fn relay_config(ice_servers: &[IceServer]) -> Result<RelayConfig, ClientError> {
    ice_servers
        .iter()
        .find_map(|s| {
            Some(RelayConfig {
                server: crate::turn::udp_server(&s.urls)?,
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
        })
        .ok_or_else(|| {
            let urls: Vec<&String> = ice_servers.iter().flat_map(|s| &s.urls).collect();
            ClientError::Protocol(format!(
                "joined carries no turn:IP:PORT?transport=udp ICE server (URLs: {urls:?})"
            ))
        })
}

/// Waits for `joined`; returns whether the server takes simulcast, and its ICE servers.
async fn wait_joined(ws: &mut WsStream) -> Result<(bool, Vec<IceServer>), ClientError> {
    while let Some(message) = ws.next().await {
        let message = message.map_err(|e| ClientError::Connect(e.to_string()))?;
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<ServerMessage>(&text) {
            Ok(ServerMessage::Joined {
                simulcast,
                ice_servers,
                ..
            }) => return Ok((simulcast, ice_servers)),
            Ok(ServerMessage::Error { code, message }) => {
                return Err(ClientError::Refused(format!("{code:?}: {message}")))
            }
            _ => {}
        }
    }
    Err(ClientError::Closed)
}

async fn on_signal(ws: &mut WsStream, peer: &mut Peer, text: &str) -> Result<(), ClientError> {
    let message: ServerMessage = serde_json::from_str(text)
        .map_err(|e| ClientError::Protocol(format!("{e}: {text:.120}")))?;
    match message {
        ServerMessage::Answer { sdp, .. } => peer.accept_answer(&sdp)?,
        ServerMessage::Offer { sdp } => {
            let answer = peer.answer(&sdp)?;
            send(ws, &ClientMessage::Answer { sdp: answer }).await?;
        }
        ServerMessage::Error { code, message } => {
            return Err(ClientError::Refused(format!("{code:?}: {message}")))
        }
        ServerMessage::Bye { reason } => return Err(ClientError::Removed(reason)),
        ServerMessage::PublishLayers { mid, rids } => peer.publish_layers(&mid, &rids),
        ServerMessage::TrackPaused { .. } => peer.shared().tx.borrow_mut().tracks_paused += 1,
        ServerMessage::TrackResumed { .. } => peer.shared().tx.borrow_mut().tracks_resumed += 1,
        _ => {}
    }
    Ok(())
}

async fn send(ws: &mut WsStream, message: &ClientMessage) -> Result<(), ClientError> {
    let text = serde_json::to_string(message).expect("client messages serialize");
    ws.send(Message::text(text))
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))
}
