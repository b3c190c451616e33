//! The `renkei` binary's library half: configuration, the server process,
//! the CLI commands, and the demo. Integration tests drive these directly.

pub mod app;
pub mod campaigns;
pub mod cli;
pub mod config;
pub mod demo;
mod demo_notices;
mod demo_replies;
mod demo_sequence;
mod health;
pub mod preview;
pub mod progress;
pub mod relay;
pub mod report;
pub mod serve;
pub mod telemetry;

/// An HTTP client for renkei's own calls (demo, bench, tests). reqwest is
/// built without a default TLS provider; this installs ring once.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
