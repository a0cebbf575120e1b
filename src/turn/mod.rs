//! Embedded TURN (RFC 8656): reach for clients behind firewalls that let out only TCP or TLS
//! to a few ports, or no UDP at all.
//!
//! - [`credentials`] mints and checks short-lived "TURN REST API" credentials, handed to the
//!   client with its ICE servers in `joined`.
//! - [`server`] is the sans-IO core (allocations, permissions, channels, quotas), which relays
//!   only to the SFU's own media addresses.
//! - [`metrics`] holds `huizhen_turn_*`; [`config`] the `[turn]` section.
//!
//! The media task drives the core: TURN over UDP arrives on its own socket in the media task,
//! TURN over TCP and TLS through per-connection reader tasks (see `crate::edge::turn`),
//! and relayed data goes into the SFU without touching a socket.

pub mod config;
pub mod credentials;
pub mod metrics;
pub mod server;

pub use config::TurnConfig;
pub use credentials::{Credential, TurnSecret};
pub use metrics::TurnMetrics;
pub use server::{ClientKey, Transport, TurnOutput, TurnServer};

use std::net::IpAddr;

use huizhen_signaling::protocol::IceServer;

/// What a signaling session hands its client: the TURN URLs and a fresh credential.
#[derive(Debug)]
pub struct TurnGrants {
    secret: TurnSecret,
    ttl_secs: u64,
    urls: Vec<String>,
}

impl TurnGrants {
    /// Grants for `urls`, credentials valid `ttl_secs`.
    pub fn new(secret: TurnSecret, ttl_secs: u64, urls: Vec<String>) -> Self {
        TurnGrants {
            secret,
            ttl_secs,
            urls,
        }
    }

    /// The URLs handed out.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The ICE servers for one session, with a credential minted now.
    pub fn ice_servers(&self, now_unix: u64) -> Vec<IceServer> {
        if self.urls.is_empty() {
            return Vec::new();
        }
        let credential = self.secret.mint(now_unix, self.ttl_secs);
        vec![IceServer {
            urls: self.urls.clone(),
            username: credential.username,
            credential: credential.password,
        }]
    }
}

/// The `turn:`/`turns:` URLs for the announced IPs and the bound ports: UDP and TCP per
/// announced IP, TLS by host name (the certificate's).
pub fn urls(
    announce: &[IpAddr],
    udp_port: Option<u16>,
    tcp_port: Option<u16>,
    tls: Option<(&str, u16)>,
) -> Vec<String> {
    let mut urls = Vec::new();
    for ip in announce {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        if let Some(port) = udp_port {
            urls.push(format!("turn:{host}:{port}?transport=udp"));
        }
        if let Some(port) = tcp_port {
            urls.push(format!("turn:{host}:{port}?transport=tcp"));
        }
    }
    if let Some((host, port)) = tls {
        urls.push(format!("turns:{host}:{port}?transport=tcp"));
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_cover_each_transport_and_bracket_ipv6() {
        let announce = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(
            urls(
                &announce,
                Some(3478),
                Some(3479),
                Some(("turn.example", 443))
            ),
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3479?transport=tcp",
                "turn:[::1]:3478?transport=udp",
                "turn:[::1]:3479?transport=tcp",
                "turns:turn.example:443?transport=tcp",
            ]
        );
    }

    #[test]
    fn every_session_gets_its_own_credential() {
        let grants = TurnGrants::new(TurnSecret::random(), 600, vec!["turn:x".into()]);
        let a = grants.ice_servers(1_000);
        let b = grants.ice_servers(1_000);
        assert_eq!(a[0].urls, vec!["turn:x".to_string()]);
        assert!(a[0].username.starts_with("1600:"));
        assert_ne!(a[0].username, b[0].username);
        assert!(TurnGrants::new(TurnSecret::random(), 600, vec![])
            .ice_servers(0)
            .is_empty());
    }
}
