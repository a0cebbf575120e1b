//! Typed server configuration.
//!
//! Every field has a default that runs on one machine (`huizhen serve` needs no file); a TOML
//! file (documented field by field in `configs/huizhen.toml`) overrides them. Values are checked
//! once at start-up by [`Config::validate`] and a bad one is reported with its dotted field name,
//! so an operator never finds out about a typo from a half-working server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message, naming the field and line.
        message: String,
    },
    /// A field has a value outside its allowed range.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted field name, e.g. `media.keyframe_throttle_ms`.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP, WebSocket and TLS settings.
    pub http: HttpConfig,
    /// Media (SFU) settings.
    pub media: MediaConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Signaling settings.
    pub signaling: SignalingConfig,
    /// Clinic (waiting room, invitations) settings.
    pub clinic: ClinicConfig,
    /// Identity tokens.
    pub auth: crate::auth::AuthConfig,
    /// REST admin API.
    pub api: ApiConfig,
    /// Where state lives.
    pub storage: StorageConfig,
    /// Webhooks to the hospital's system.
    pub webhook: crate::webhook::WebhookConfig,
    /// Encryption and signing of recordings.
    pub recording: crate::vault::VaultConfig,
    /// How recordings are cut and buffered.
    pub recorder: crate::recorder::RecorderConfig,
    /// Where recordings are archived.
    pub archive: crate::archive::ArchiveConfig,
    /// The embedded TURN server.
    pub turn: crate::turn::TurnConfig,
}

/// Signaling settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// Allow `join` by room name without a clinic consultation (development, open meetings).
    /// Unset: on only in development mode (no token key configured), off otherwise, so a
    /// production server admits calls only through the clinic's access rules.
    pub open_rooms: Option<bool>,
    /// Base URL printed in links (`http(s)://host:port`); derived from `http.listen` if unset.
    pub public_url: Option<String>,
    /// How long a participant whose WebSocket dropped is kept (media and all) for `resume`;
    /// 0 turns resume off (the participant leaves when its socket closes).
    pub resume_grace_seconds: u64,
}

impl SignalingConfig {
    /// [`Self::resume_grace_seconds`] as a duration.
    pub fn resume_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.resume_grace_seconds)
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            open_rooms: None,
            public_url: None,
            resume_grace_seconds: 30,
        }
    }
}

/// Clinic settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClinicConfig {
    /// Check-in opens this many minutes before the slot.
    pub checkin_window_minutes: u64,
    /// A dropped patient keeps their place and seat this many seconds.
    pub grace_seconds: u64,
    /// Unanswered invitations lapse after this many seconds.
    pub invite_timeout_seconds: u64,
    /// Most admitted participants per consultation.
    pub max_participants: usize,
    /// `slot_then_arrival` or `arrival`.
    pub queue_order: huizhen_signaling::clinic::QueueOrder,
    /// Seed a demo clinic and print doctor/patient links at start (development).
    pub seed_demo: bool,
    /// Appointments whose slot started longer ago than this many hours are history: they
    /// leave memory and can no longer be checked in to or booked.
    pub history_horizon_hours: u64,
}

impl Default for ClinicConfig {
    fn default() -> Self {
        ClinicConfig {
            checkin_window_minutes: 30,
            grace_seconds: 120,
            invite_timeout_seconds: 60,
            max_participants: 12,
            queue_order: huizhen_signaling::clinic::QueueOrder::SlotThenArrival,
            seed_demo: true,
            history_horizon_hours: 24,
        }
    }
}

impl ClinicConfig {
    /// Engine settings.
    pub fn settings(&self) -> huizhen_signaling::clinic::ClinicSettings {
        huizhen_signaling::clinic::ClinicSettings {
            checkin_window_ms: self.checkin_window_minutes * 60_000,
            grace_ms: self.grace_seconds * 1000,
            invite_timeout_ms: self.invite_timeout_seconds * 1000,
            max_participants: self.max_participants,
            queue_order: self.queue_order,
            history_horizon_ms: self.history_horizon_hours * 3600_000,
            ..Default::default()
        }
    }
}

/// REST admin API settings.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// API key (`Authorization: Bearer <key>`). Unset: generated once and kept in the data
    /// directory (development).
    pub key: Option<String>,
    /// File holding the API key (preferred over `key`).
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .finish()
    }
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the SQLite database (`huizhen.db`) and generated development secrets.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("huizhen-data"),
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for HTTP/WebSocket (signaling, web client, metrics).
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, serve HTTPS/WSS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most simultaneous signaling sessions that authenticated, joined or resumed (a
    /// WebSocket that has not is bounded by `max_http_connections`, the per-source cap and the
    /// 10 s authentication deadline instead).
    pub max_connections: usize,
    /// Most open HTTP connections (WebSockets included); over it a connection is closed at once.
    pub max_http_connections: usize,
    /// Most open HTTP connections from one IP address (a hospital's NAT carries many users).
    pub max_connections_per_source: usize,
    /// A request head (and a TLS handshake) must arrive within this; an idle keep-alive
    /// connection closes after it.
    pub header_read_timeout_seconds: u64,
}

/// Media (SFU) settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The one UDP socket all media flows through.
    pub udp_listen: SocketAddr,
    /// The one TCP socket for ICE-TCP (RFC 4571 framing); bound only when `announce_tcp`.
    pub tcp_listen: SocketAddr,
    /// Addresses announced in ICE candidates (public IP behind a 1:1 NAT, or 127.0.0.1).
    pub announce: Vec<IpAddr>,
    /// Announce UDP host candidates.
    pub announce_udp: bool,
    /// Announce passive TCP host candidates (needs `tcp_listen`).
    pub announce_tcp: bool,
    /// Most participants in one room (WHEP viewers apart).
    pub max_participants_per_room: usize,
    /// Most WHEP viewers (receive-only, not announced) in one room.
    pub max_viewers_per_room: usize,
    /// Most participants on the server.
    pub max_participants: usize,
    /// Minimum interval between keyframe requests to one published track, in milliseconds.
    pub keyframe_throttle_ms: u64,
    /// Longest time sent packets are kept to answer retransmission requests (NACK), in ms;
    /// each subscriber's window follows its measured round trip below this.
    pub retransmit_history_ms: u64,
    /// A connected participant that sends nothing (not even ICE checks) for this long is removed.
    pub peer_timeout_ms: u64,
    /// A participant that has not connected ICE/DTLS this long after joining is removed.
    pub connect_timeout_ms: u64,
    /// Frames queued towards one ICE-TCP connection before further frames are dropped.
    pub tcp_queue_frames: usize,
}

/// Log settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            tls_cert: None,
            tls_key: None,
            max_connections: 10_000,
            max_http_connections: 12_000,
            max_connections_per_source: 1_000,
            header_read_timeout_seconds: 10,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            udp_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7882)),
            tcp_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7881)),
            announce: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            announce_udp: true,
            announce_tcp: true,
            max_participants_per_room: 50,
            max_viewers_per_room: 1_000,
            max_participants: 2_000,
            keyframe_throttle_ms: 500,
            retransmit_history_ms: 1000,
            peer_timeout_ms: 4_000,
            connect_timeout_ms: 20_000,
            tcp_queue_frames: 1_024,
        }
    }
}

impl Config {
    /// Read and validate a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Everything on 127.0.0.1 with OS-chosen ports: for tests.
    pub fn loopback_for_tests() -> Config {
        let any_local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let data_dir = std::env::temp_dir().join(format!(
            "huizhen-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Config {
            http: HttpConfig {
                listen: any_local,
                ..HttpConfig::default()
            },
            media: MediaConfig {
                udp_listen: any_local,
                tcp_listen: any_local,
                announce: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                ..MediaConfig::default()
            },
            storage: StorageConfig {
                data_dir: data_dir.clone(),
            },
            turn: crate::turn::TurnConfig {
                udp_listen: any_local,
                tcp_listen: any_local,
                tls_listen: any_local,
                ..Default::default()
            },
            archive: crate::archive::ArchiveConfig {
                local_dir: data_dir.join("archive"),
                spool_dir: Some(data_dir.join("spool")),
                ..Default::default()
            },
            ..Config::default()
        }
    }

    /// Check ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return invalid(
                "http.tls_cert",
                "tls_cert and tls_key must be set together (or both left out)",
            );
        }
        if self.http.max_http_connections == 0 {
            return invalid("http.max_http_connections", "must be at least 1");
        }
        if self.http.max_connections_per_source == 0 {
            return invalid("http.max_connections_per_source", "must be at least 1");
        }
        if !(1..=300).contains(&self.http.header_read_timeout_seconds) {
            return invalid("http.header_read_timeout_seconds", "must be 1..=300");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        let m = &self.media;
        if m.announce.is_empty() {
            return invalid("media.announce", "needs at least one IP address");
        }
        if let Some(ip) = m.announce.iter().find(|ip| ip.is_unspecified()) {
            return invalid(
                "media.announce",
                &format!("{ip} is not an address clients can reach; give the host's IP"),
            );
        }
        if !m.announce_udp && !m.announce_tcp {
            return invalid(
                "media.announce_udp",
                "announce_udp and announce_tcp are both false: clients could not connect",
            );
        }
        if m.max_participants_per_room < 2 {
            return invalid("media.max_participants_per_room", "must be at least 2");
        }
        if m.max_viewers_per_room == 0 {
            return invalid("media.max_viewers_per_room", "must be at least 1");
        }
        if m.max_participants == 0 {
            return invalid("media.max_participants", "must be at least 1");
        }
        if !(50..=10_000).contains(&m.keyframe_throttle_ms) {
            return invalid("media.keyframe_throttle_ms", "must be within 50..=10000");
        }
        if !(200..=10_000).contains(&m.retransmit_history_ms) {
            return invalid("media.retransmit_history_ms", "must be within 200..=10000");
        }
        if !(1_000..=60_000).contains(&m.peer_timeout_ms) {
            return invalid("media.peer_timeout_ms", "must be within 1000..=60000");
        }
        if !(1_000..=300_000).contains(&m.connect_timeout_ms) {
            return invalid("media.connect_timeout_ms", "must be within 1000..=300000");
        }
        if m.tcp_queue_frames == 0 {
            return invalid("media.tcp_queue_frames", "must be at least 1");
        }
        let c = &self.clinic;
        if !(1..=24 * 60).contains(&c.checkin_window_minutes) {
            return invalid("clinic.checkin_window_minutes", "must be within 1..=1440");
        }
        if !(1..=720).contains(&c.history_horizon_hours) {
            return invalid("clinic.history_horizon_hours", "must be within 1..=720");
        }
        if self.signaling.resume_grace_seconds > 600 {
            return invalid("signaling.resume_grace_seconds", "must be within 0..=600");
        }
        if !(5..=3600).contains(&c.grace_seconds) {
            return invalid("clinic.grace_seconds", "must be within 5..=3600");
        }
        if !(5..=600).contains(&c.invite_timeout_seconds) {
            return invalid("clinic.invite_timeout_seconds", "must be within 5..=600");
        }
        if !(2..=m.max_participants_per_room).contains(&c.max_participants) {
            return invalid(
                "clinic.max_participants",
                "must be at least 2 and at most media.max_participants_per_room",
            );
        }
        if let Some(url) = &self.signaling.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(
                    "signaling.public_url",
                    "must start with http:// or https://",
                );
            }
        }
        if let Some(key) = &self.api.key {
            if key.len() < 16 {
                return invalid("api.key", "must be at least 16 characters");
            }
        }
        self.turn
            .validate(self.http.tls_cert.is_some())
            .map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        self.auth.validate().map_err(|e| ConfigError::Invalid {
            field: e.field(),
            message: e.message(),
        })?;
        self.webhook.validate().map_err(|e| match e {
            crate::webhook::WebhookError::Config { field, message } => {
                ConfigError::Invalid { field, message }
            }
            other => ConfigError::Invalid {
                field: "webhook",
                message: other.to_string(),
            },
        })?;
        self.recording
            .validate()
            .map_err(|e| ConfigError::Invalid {
                field: e.field,
                message: e.message,
            })?;
        self.recorder.validate().map_err(|e| match e {
            crate::recorder::RecorderError::InvalidConfig { field, reason } => {
                ConfigError::Invalid {
                    field,
                    message: reason,
                }
            }
        })?;
        self.archive.validate().map_err(|e| match e {
            crate::archive::ArchiveError::Config { field, message } => {
                ConfigError::Invalid { field, message }
            }
            other => ConfigError::Invalid {
                field: "archive",
                message: other.to_string(),
            },
        })?;
        Ok(())
    }
}

impl MediaConfig {
    /// Keyframe throttle as a duration.
    pub fn keyframe_throttle(&self) -> Duration {
        Duration::from_millis(self.keyframe_throttle_ms)
    }
    /// Retransmission history as a duration.
    pub fn retransmit_history(&self) -> Duration {
        Duration::from_millis(self.retransmit_history_ms)
    }
    /// Peer inactivity timeout as a duration.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }
    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        Config::loopback_for_tests().validate().unwrap();
    }

    #[test]
    fn shipped_config_file_parses_and_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/huizhen.toml");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::from_toml("[media]\nudp_lisen = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(err.to_string().contains("udp_lisen"), "{err}");
    }

    #[test]
    fn bad_value_names_the_field() {
        let err = Config::from_toml("[media]\nkeyframe_throttle_ms = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("media.keyframe_throttle_ms"),
            "{err}"
        );
        let err = Config::from_toml("[media]\nretransmit_history_ms = 50\n").unwrap_err();
        assert!(
            err.to_string().contains("media.retransmit_history_ms"),
            "{err}"
        );
        let err = Config::from_toml("[media]\nannounce = [\"0.0.0.0\"]\n").unwrap_err();
        assert!(err.to_string().contains("media.announce"), "{err}");
        let err = Config::from_toml("[http]\ntls_cert = \"/x.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("http.tls_cert"), "{err}");
        let err = Config::from_toml("[media]\nudp_listen = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("udp_listen"), "{err}");
    }

    #[test]
    fn tcp_only_announcement_is_allowed() {
        let c = Config::from_toml("[media]\nannounce_udp = false\n").unwrap();
        assert!(!c.media.announce_udp && c.media.announce_tcp);
    }
}
