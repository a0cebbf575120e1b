//! A simulated participant of Janus Gateway's VideoRoom (Janus 1.x, WebSocket transport,
//! subprotocol `janus-protocol`), for comparing huizhen with an established SFU.
//!
//! Janus needs two peer connections per participant: a publisher handle (we offer, with every
//! candidate in the SDP: `"trickle": false`) and a subscriber handle (Janus offers the feeds we
//! ask for; we answer with `start`). Subscribers ask only once every publisher they want is
//! connected (a shared [`Feeds`] registry), as Janus's own demos do.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ClientError, Wake, WsStream};
use crate::media::MediaPlan;
use crate::peer::{Peer, Shared};
use crate::scenario::ParticipantSpec;

/// Janus rooms are numbers: unit `u` is room `ROOM_BASE + u`.
const ROOM_BASE: u64 = 100_000;
/// How long a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a subscriber waits for its publishers.
const FEEDS_TIMEOUT: Duration = Duration::from_secs(60);
/// Janus drops sessions without traffic after `session_timeout` (60 s by default).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Publishers that are connected, by participant index: their Janus feed ids.
#[derive(Debug, Default)]
pub struct Feeds {
    ready: RefCell<HashMap<u32, u64>>,
}

impl Feeds {
    /// An empty registry.
    pub fn new() -> Rc<Feeds> {
        Rc::default()
    }

    fn publish(&self, index: u32, feed: u64) {
        self.ready.borrow_mut().insert(index, feed);
    }

    fn all(&self, indices: &[u32]) -> Option<Vec<u64>> {
        let ready = self.ready.borrow();
        indices.iter().map(|i| ready.get(i).copied()).collect()
    }
}

/// Runs one participant until `stop` says so (or it fails).
pub async fn participant(
    url: String,
    spec: ParticipantSpec,
    plan: MediaPlan,
    ip: IpAddr,
    shared: Rc<Shared>,
    feeds: Rc<Feeds>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let started = Instant::now();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let ws = crate::client::connect(request).await?;
    let mut janus = Janus {
        ws,
        session: 0,
        next: 0,
        up: Default::default(),
    };
    let created = janus.request(json!({"janus": "create"})).await?;
    janus.session = id_of(&created)?;
    let room = ROOM_BASE + u64::from(spec.unit);
    let control = janus.attach().await?;
    janus.create_room(control, room).await?;

    let mut publisher = None;
    let mut feed = None;
    if spec.publishes {
        let joined = janus
            .message(control, json!({"request": "join", "ptype": "publisher", "room": room, "display": format!("load-{}", spec.index)}), None)
            .await?;
        feed = Some(
            joined["plugindata"]["data"]["id"]
                .as_u64()
                .ok_or_else(|| ClientError::Protocol(format!("publisher join: {joined}")))?,
        );
        let mut peer = Peer::bind(ip, spec.index, shared.clone(), None).await?;
        let offer = peer.offer(Some(plan), &[]);
        let answered = janus
            .message(
                control,
                json!({"request": "publish"}),
                Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
            )
            .await?;
        let sdp = answered["jsep"]["sdp"].as_str().ok_or_else(|| {
            ClientError::Protocol(format!("publish without an answer: {answered}"))
        })?;
        peer.accept_answer(sdp)?;
        publisher = Some(peer);
    }

    let mut subscriber: Option<Peer> = None;
    let mut subscriber_handle = None;
    let mut registered = false;
    let mut subscribe_after = Instant::now();
    let mut feed_retries = 0;
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let mut join_recorded = false;
    let mut next_keepalive = Instant::now() + KEEPALIVE;
    let sleep = tokio::time::sleep_until(next_keepalive.into());
    tokio::pin!(sleep);
    let result = loop {
        let now = Instant::now();
        // Subscribe once every publisher we want is connected.
        if subscriber.is_none() && !spec.receives.is_empty() && now >= subscribe_after {
            if let Some(feed_ids) = feeds.all(&spec.receives) {
                let handle = match subscriber_handle {
                    Some(h) => h,
                    None => match janus.attach().await {
                        Ok(h) => *subscriber_handle.insert(h),
                        Err(e) => break Err(e),
                    },
                };
                match janus
                    .subscribe(handle, room, &feed_ids, ip, spec.index, &shared)
                    .await
                {
                    Ok(peer) => subscriber = Some(peer),
                    // Janus may not have set the publisher up yet though its media flows.
                    Err(ClientError::Refused(e))
                        if e.contains("No such feed") && feed_retries < 40 =>
                    {
                        feed_retries += 1;
                        subscribe_after = now + Duration::from_millis(250);
                    }
                    Err(e) => break Err(e),
                }
            } else if now.duration_since(started) > FEEDS_TIMEOUT {
                break Err(ClientError::Timeout("the publishers to connect"));
            }
        }
        let mut wake = next_keepalive;
        for p in [&publisher, &subscriber].into_iter().flatten() {
            wake = wake.min(p.next_wake());
        }
        if subscriber.is_none() && !spec.receives.is_empty() {
            wake = wake.min(now + Duration::from_millis(100));
        }
        let wake = tokio::time::Instant::from_std(wake);
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        let event = tokio::select! {
            r = recv(publisher.as_ref(), &mut buf) => r.map_or(Wake::Timer, |(n, s)| Wake::Datagram(0, n, s)),
            r = recv(subscriber.as_ref(), &mut buf2) => r.map_or(Wake::Timer, |(n, s)| Wake::Datagram(1, n, s)),
            m = janus.ws.next() => Wake::Signal(m),
            _ = &mut sleep => Wake::Timer,
            _ = stop.changed() => Wake::Stop,
        };
        match event {
            Wake::Datagram(which, n, source) => {
                let (peer, bytes) = if which == 0 {
                    (publisher.as_mut(), &buf[..n])
                } else {
                    (subscriber.as_mut(), &buf2[..n])
                };
                if let Some(peer) = peer {
                    peer.on_datagram(Instant::now(), source, bytes);
                }
                let (peer, buf) = if which == 0 {
                    (publisher.as_mut(), &mut buf)
                } else {
                    (subscriber.as_mut(), &mut buf2)
                };
                if let Some(peer) = peer {
                    peer.read_ready(buf, crate::huizhen::BURST);
                }
            }
            Wake::Signal(Some(Ok(Message::Text(text)))) => {
                let event: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => break Err(ClientError::Protocol(e.to_string())),
                };
                janus.note(&event);
                if event["janus"] == "hangup" || event["janus"] == "timeout" {
                    break Err(ClientError::Removed(
                        event["reason"].as_str().unwrap_or("hangup").into(),
                    ));
                }
            }
            Wake::Signal(Some(Ok(Message::Close(_))) | None) => break Err(ClientError::Closed),
            Wake::Signal(Some(Err(e))) => break Err(ClientError::Connect(e.to_string())),
            Wake::Signal(Some(Ok(_))) | Wake::Timer | Wake::Ping => {}
            Wake::Stop => break Ok(()),
        }
        let now = Instant::now();
        if now >= next_keepalive {
            next_keepalive = now + KEEPALIVE;
            let keepalive = janus.envelope(json!({"janus": "keepalive"}));
            if let Err(e) = janus.send(keepalive).await {
                break Err(e);
            }
        }
        for p in [&mut publisher, &mut subscriber].into_iter().flatten() {
            p.tick(now);
        }
        if let (Some(p), Some(feed), false) = (&publisher, feed, registered) {
            if p.connected && janus.up.contains(&control) {
                feeds.publish(spec.index, feed);
                registered = true;
            }
        }
        if !join_recorded {
            if let Some(at) = subscriber.as_ref().and_then(|s| s.first_media) {
                shared
                    .rx
                    .borrow_mut()
                    .on_joined(at.duration_since(started).as_millis() as u64);
                join_recorded = true;
            }
        }
        if [&publisher, &subscriber]
            .into_iter()
            .flatten()
            .any(|p| p.failed)
        {
            break Err(ClientError::MediaFailed);
        }
    };
    for p in [&mut publisher, &mut subscriber].into_iter().flatten() {
        p.close();
    }
    if result.is_ok() {
        let destroy = janus.envelope(json!({"janus": "destroy"}));
        let _ = janus.send(destroy).await;
        let _ = janus.ws.close(None).await;
    }
    result
}

async fn recv(peer: Option<&Peer>, buf: &mut [u8]) -> Option<(usize, std::net::SocketAddr)> {
    match peer {
        Some(p) => p.socket().recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

fn id_of(reply: &Value) -> Result<u64, ClientError> {
    reply["data"]["id"]
        .as_u64()
        .ok_or_else(|| ClientError::Protocol(format!("no id in {reply}")))
}

struct Janus {
    ws: WsStream,
    session: u64,
    next: u64,
    /// Handles whose peer connection Janus reported up (`webrtcup`), whenever it said so.
    up: std::collections::HashSet<u64>,
}

impl Janus {
    fn envelope(&mut self, mut body: Value) -> Value {
        self.next += 1;
        body["transaction"] = json!(format!("t{}", self.next));
        if self.session != 0 {
            body["session_id"] = json!(self.session);
        }
        body
    }

    /// Remembers asynchronous events that matter later (`webrtcup`).
    fn note(&mut self, event: &Value) {
        if event["janus"] == "webrtcup" {
            if let Some(sender) = event["sender"].as_u64() {
                self.up.insert(sender);
            }
        }
    }

    async fn send(&mut self, message: Value) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))
    }

    /// Sends `body` and waits for the reply to it that is not an `ack`.
    async fn request(&mut self, body: Value) -> Result<Value, ClientError> {
        let message = self.envelope(body);
        let transaction = message["transaction"].clone();
        self.send(message).await?;
        let wait = async {
            while let Some(frame) = self.ws.next().await {
                let frame = frame.map_err(|e| ClientError::Connect(e.to_string()))?;
                let Message::Text(text) = frame else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.note(&reply);
                if reply["transaction"] != transaction || reply["janus"] == "ack" {
                    continue;
                }
                if reply["janus"] == "error" {
                    return Err(ClientError::Refused(reply["error"].to_string()));
                }
                return Ok(reply);
            }
            Err(ClientError::Closed)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Timeout("a Janus reply"))?
    }

    async fn attach(&mut self) -> Result<u64, ClientError> {
        let reply = self
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        id_of(&reply)
    }

    /// A plugin message; fails on a VideoRoom error.
    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut message = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        let reply = self.request(message).await?;
        let data = &reply["plugindata"]["data"];
        if data["videoroom"] == "event" && data.get("error_code").is_some() {
            return Err(ClientError::Refused(data["error"].to_string()));
        }
        Ok(reply)
    }

    /// Creates `room` unless it exists (error 427).
    async fn create_room(&mut self, handle: u64, room: u64) -> Result<(), ClientError> {
        let reply = self
            .request(json!({"janus": "message", "handle_id": handle, "body": {
                "request": "create", "room": room, "publishers": 100,
                "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0,
                "notify_joining": false, "permanent": false,
            }}))
            .await?;
        let data = &reply["plugindata"]["data"];
        match data["error_code"].as_u64() {
            None | Some(427) => Ok(()),
            Some(_) => Err(ClientError::Refused(data["error"].to_string())),
        }
    }

    /// Subscribes `handle` to `feeds`: Janus offers, we answer with `start`.
    async fn subscribe(
        &mut self,
        handle: u64,
        room: u64,
        feeds: &[u64],
        ip: IpAddr,
        index: u32,
        shared: &Rc<Shared>,
    ) -> Result<Peer, ClientError> {
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let attached = self
            .message(
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
                None,
            )
            .await?;
        let offer = attached["jsep"]["sdp"].as_str().ok_or_else(|| {
            ClientError::Protocol(format!("subscriber join without an offer: {attached}"))
        })?;
        let mut peer = Peer::bind(ip, index, shared.clone(), None).await?;
        let answer = peer.answer(offer)?;
        self.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
        )
        .await?;
        Ok(peer)
    }
}
