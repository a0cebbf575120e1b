//! huizhen (会诊): a real-time telemedicine media server.
//!
//! The crate holds the SFU core ([`sfu`]), its network edge ([`edge`]), the HTTP/WebSocket
//! front ([`http`]), configuration ([`config`]) and the server assembly ([`server`]).

pub mod config;
pub mod sfu;
pub mod edge;
pub mod http;
pub mod redact;
pub mod server;
pub mod telemetry;
pub mod audit;
pub mod auth;
pub mod store;
pub mod webhook;
pub mod clinic;
pub mod archive;
pub mod vault;
pub mod recorder;
