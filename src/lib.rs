//! huizhen (会诊): a real-time telemedicine media server.
//!
//! The crate holds the SFU core ([`sfu`]), its network edge ([`edge`]), the HTTP/WebSocket
//! front ([`http`]), configuration ([`config`]) and the server assembly ([`server`]).

pub mod archive;
pub mod audit;
pub mod auth;
pub mod clinic;
pub mod config;
pub mod edge;
pub mod http;
pub mod recorder;
pub mod redact;
pub mod server;
pub mod sfu;
pub mod store;
pub mod telemetry;
pub mod turn;
pub mod vault;
pub mod webhook;
