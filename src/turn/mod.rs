//! Embedded TURN (RFC 8656): reach for clients behind firewalls that let out only TCP or TLS
//! to a few ports, or no UDP at all.
//!
//! - [`credentials`]: short-lived "TURN REST API" credentials, minted per session and handed
//!   to the client with its ICE servers in `joined`.
//! - [`server`]: the sans-IO core (allocations, permissions, channels, quotas), which relays
//!   only to the SFU's own media addresses.
//! - [`metrics`]: `huizhen_turn_*`.
//!
//! The media task drives the core: TURN over UDP arrives on its own socket in the media task,
//! TURN over TCP and TLS through per-connection reader tasks (see `crate::edge::turn_stream`),
//! and relayed data goes into the SFU without touching a socket.

pub mod credentials;
pub mod metrics;
pub mod server;

pub use credentials::{Credential, TurnSecret};
pub use metrics::TurnMetrics;
pub use server::{ClientKey, Transport, TurnOutput, TurnServer};
