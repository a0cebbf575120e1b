//! What the signaling adapters (huizhen, Janus) share: errors and the event loop's wake reasons.

use std::net::SocketAddr;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::peer::PeerError;

/// A signaling WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a signaling WebSocket with small buffers: tungstenite zero-fills its whole read
/// buffer (128 KiB by default) on every read attempt, and a participant's task tries a read
/// each time a media packet wakes it — that was most of the generator's CPU.
pub async fn connect<R>(request: R) -> Result<WsStream, ClientError>
where
    R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
{
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| ClientError::Connect(e.to_string()))
}

/// Why a simulated participant stopped early.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The WebSocket could not be opened or broke.
    #[error("signaling connection: {0}")]
    Connect(String),
    /// The server closed the signaling connection.
    #[error("signaling connection closed by the server")]
    Closed,
    /// The server refused a request.
    #[error("refused: {0}")]
    Refused(String),
    /// The server removed the participant.
    #[error("removed by the server: {0}")]
    Removed(String),
    /// A message that could not be understood.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Waited too long for the named step.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// ICE/DTLS failed or the session closed.
    #[error("media session failed")]
    MediaFailed,
    /// The WebRTC endpoint failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

impl ClientError {
    /// A short label for counting errors by kind in reports.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Connect(_) => "connect",
            ClientError::Closed => "closed",
            ClientError::Refused(_) => "refused",
            ClientError::Removed(_) => "removed",
            ClientError::Protocol(_) => "protocol",
            ClientError::Timeout(_) => "timeout",
            ClientError::MediaFailed => "media_failed",
            ClientError::Peer(PeerError::Turn(_)) => "turn",
            ClientError::Peer(_) => "peer",
        }
    }
}

/// Why a participant's event loop woke up.
#[derive(Debug)]
pub enum Wake {
    /// A datagram of `n` bytes from `source` on peer number `.0`.
    Datagram(usize, usize, SocketAddr),
    /// A signaling frame (or the end of the socket).
    Signal(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    /// A timer.
    Timer,
    /// Time to ping the signaling socket.
    Ping,
    /// The run is over.
    Stop,
}
