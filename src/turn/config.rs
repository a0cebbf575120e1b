//! The `[turn]` configuration section.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Embedded TURN server settings. See `configs/huizhen.toml` for the documented defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the TURN server and hand its URLs and credentials to clients in `joined`.
    pub enabled: bool,
    /// Which listeners run: any of `udp`, `tcp`, `tls`.
    pub transports: Vec<TurnTransport>,
    /// UDP listener address.
    pub udp_listen: SocketAddr,
    /// TCP listener address.
    pub tcp_listen: SocketAddr,
    /// TLS listener address (e.g. `0.0.0.0:443` on a second IP address).
    pub tls_listen: SocketAddr,
    /// PEM certificate chain for TLS; default: `http.tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS; default: `http.tls_key`.
    pub tls_key: Option<PathBuf>,
    /// Host name clients use for `turns:` URLs (must match the certificate); default: the
    /// host of `signaling.public_url`.
    pub tls_host: Option<String>,
    /// REALM of the long-term credentials.
    pub realm: String,
    /// A file holding the credential secret (at least 32 bytes), shared with a hospital system
    /// or another TURN server that mints credentials in the same scheme; default: a random
    /// secret per start (credentials are then minted only by this server).
    pub secret_file: Option<PathBuf>,
    /// How long a credential handed out in `joined` is valid, in seconds (60..=604800). An
    /// allocation never outlives its credential.
    pub credential_ttl_seconds: u64,
    /// Most allocations on the server (1..).
    pub max_allocations: usize,
    /// Most allocations per credential, i.e. per session (1..=64).
    pub max_allocations_per_credential: usize,
    /// Most open TCP plus TLS client connections (1..).
    pub max_connections: usize,
    /// Messages queued towards one TCP/TLS client before further ones are dropped (1..).
    pub queue_frames: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            transports: vec![TurnTransport::Udp, TurnTransport::Tcp],
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tcp_listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 5349)),
            tls_cert: None,
            tls_key: None,
            tls_host: None,
            realm: "huizhen".into(),
            secret_file: None,
            credential_ttl_seconds: 24 * 3600,
            max_allocations: 4000,
            max_allocations_per_credential: 10,
            max_connections: 4000,
            queue_frames: 1024,
        }
    }
}

/// A TURN listener kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS.
    Tls,
}

impl TurnConfig {
    /// The address of `transport`'s listener if it runs.
    pub fn listen(&self, transport: TurnTransport) -> Option<SocketAddr> {
        if !self.enabled || !self.transports.contains(&transport) {
            return None;
        }
        Some(match transport {
            TurnTransport::Udp => self.udp_listen,
            TurnTransport::Tcp => self.tcp_listen,
            TurnTransport::Tls => self.tls_listen,
        })
    }

    /// Range and cross-field checks: `(field, message)` of the first problem.
    pub fn validate(&self, http_tls: bool) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if self.transports.is_empty() {
            return Err((
                "turn.transports",
                "no listener: list udp, tcp or tls, or set enabled = false".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "turn.tls_cert",
                "tls_cert and tls_key must be set together (or both left out)".into(),
            ));
        }
        let tls = self.transports.contains(&TurnTransport::Tls);
        if tls && self.tls_cert.is_none() && !http_tls {
            return Err((
                "turn.transports",
                "tls needs a certificate: set turn.tls_cert and turn.tls_key, or http.tls_cert"
                    .into(),
            ));
        }
        if tls
            && self.transports.contains(&TurnTransport::Tcp)
            && self.tcp_listen == self.tls_listen
        {
            return Err(("turn.tls_listen", "must differ from turn.tcp_listen".into()));
        }
        if self.realm.is_empty() || self.realm.len() > 100 || !self.realm.is_ascii() {
            return Err(("turn.realm", "must be 1..=100 ASCII characters".into()));
        }
        if !(60..=7 * 24 * 3600).contains(&self.credential_ttl_seconds) {
            return Err((
                "turn.credential_ttl_seconds",
                "must be within 60..=604800".into(),
            ));
        }
        if self.max_allocations == 0 {
            return Err(("turn.max_allocations", "must be at least 1".into()));
        }
        if !(1..=64).contains(&self.max_allocations_per_credential) {
            return Err((
                "turn.max_allocations_per_credential",
                "must be within 1..=64".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(("turn.max_connections", "must be at least 1".into()));
        }
        if self.queue_frames == 0 {
            return Err(("turn.queue_frames", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        assert_eq!(TurnConfig::default().validate(false), Ok(()));
        let tls_without_cert = TurnConfig {
            transports: vec![TurnTransport::Tls],
            ..TurnConfig::default()
        };
        assert_eq!(
            tls_without_cert.validate(false).unwrap_err().0,
            "turn.transports"
        );
        assert_eq!(tls_without_cert.validate(true), Ok(()));
        let short = TurnConfig {
            credential_ttl_seconds: 5,
            ..TurnConfig::default()
        };
        assert_eq!(
            short.validate(false).unwrap_err().0,
            "turn.credential_ttl_seconds"
        );
        let none = TurnConfig {
            transports: vec![],
            ..TurnConfig::default()
        };
        assert_eq!(none.validate(false).unwrap_err().0, "turn.transports");
        let same_port = TurnConfig {
            transports: vec![TurnTransport::Tcp, TurnTransport::Tls],
            tls_listen: "0.0.0.0:3478".parse().unwrap(),
            ..TurnConfig::default()
        };
        assert_eq!(same_port.validate(true).unwrap_err().0, "turn.tls_listen");
        let parsed: TurnConfig = toml::from_str("transports = [\"udp\", \"tls\"]").unwrap();
        assert_eq!(
            parsed.transports,
            vec![TurnTransport::Udp, TurnTransport::Tls]
        );
        assert_eq!(parsed.listen(TurnTransport::Tcp), None);
        assert!(toml::from_str::<TurnConfig>("transports = [\"sctp\"]").is_err());
        let off = TurnConfig {
            enabled: false,
            ..none
        };
        assert_eq!(off.validate(false), Ok(()));
    }
}
