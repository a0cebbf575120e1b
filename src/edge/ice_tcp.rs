//! ICE-TCP (passive, RFC 6544) with RFC 4571 framing, for hospital networks that block UDP.
//!
//! Each accepted connection gets a reader task that cuts the byte stream into frames (a 2-byte
//! big-endian length, then that many bytes) and hands them to the media task, and a writer
//! task that drains a bounded queue of frames. The media task never writes a socket itself,
//! so a stalled TCP peer only fills (and then drops from) its own queue.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::{MediaCommand, MediaHandle};

/// Largest RFC 4571 frame.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// `frame` with its RFC 4571 length prefix; `None` if it is too long to frame.
pub fn frame_of(frame: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(frame.len()).ok()?;
    let mut framed = Vec::with_capacity(frame.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(frame);
    Some(framed)
}

/// The next RFC 4571 frame into `buf` (at least [`MAX_FRAME`] long); its length.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let len = usize::from(reader.read_u16().await?);
    reader.read_exact(&mut buf[..len]).await?;
    Ok(len)
}

/// Accept ICE-TCP connections until shutdown.
pub async fn run(
    listener: TcpListener,
    media: MediaHandle,
    queue_frames: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, peer, media.clone(), queue_frames));
                }
                Err(e) => {
                    debug!(error = %e, "ice-tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, media: MediaHandle, queue: usize) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let (read_half, mut write_half) = stream.into_split();
    let (writer, mut frames) = mpsc::channel::<Vec<u8>>(queue);
    if media
        .send(MediaCommand::TcpOpened { peer, writer })
        .await
        .is_err()
    {
        return;
    }
    let write_task = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let Some(framed) = frame_of(&frame) else {
                continue;
            };
            if write_half.write_all(&framed).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read_half);
    let mut buf = vec![0u8; MAX_FRAME];
    while let Ok(len) = read_frame(&mut reader, &mut buf).await {
        let frame = MediaCommand::TcpFrame {
            peer,
            local,
            data: buf[..len].to_vec(),
        };
        if media.send(frame).await.is_err() {
            break;
        }
    }
    debug!(%peer, "ice-tcp connection closed");
    let _ = media.send(MediaCommand::TcpClosed { peer }).await;
    write_task.abort();
}
