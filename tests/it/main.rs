//! huizhen's integration tests, compiled into one test binary (one link instead of twelve keeps
//! the build small and fast). Each module exercises one capability through the public crate, the
//! `huizhen` binary, or real clients (webrtc-rs peers, WebSocket signaling, an S3 server process).

mod common;

mod archive;
mod bad_input;
mod cli;
mod clinic_api;
mod crash;
mod limits;
mod recorder_mux;
mod recording;
mod restart;
mod resume;
mod store_audit;
mod tls;
mod turn;
mod vault;
mod webhook;
mod webrtc_rs;
mod whip;
