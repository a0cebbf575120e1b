//! With a certificate configured, HTTP and the signaling WebSocket are served over TLS.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use huizhen_signaling::protocol::ServerMessage;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn write_self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().to_vec())
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    cert_der: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_are_served_with_the_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("huizhen-tls-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, der) = write_self_signed(&dir);
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.http.tls_cert = Some(cert);
    config.http.tls_key = Some(key);
    let server = huizhen::server::start(config)
        .await
        .expect("server with TLS");
    assert!(server.is_tls());

    let mut tls = tls_connect(server.http_addr(), &der).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let tls = tls_connect(server.http_addr(), &der).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("WebSocket over TLS");
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let reply: ServerMessage = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply, ServerMessage::Pong {});

    // Plain HTTP on the TLS port is refused, not served.
    let mut plain = tokio::net::TcpStream::connect(server.http_addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unreadable_certificate_is_a_clear_start_error() {
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.http.tls_cert = Some("/nonexistent/cert.pem".into());
    config.http.tls_key = Some("/nonexistent/key.pem".into());
    let err = huizhen::server::start(config)
        .await
        .err()
        .expect("start must fail");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}
