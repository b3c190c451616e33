//! The `renkei` binary's library half: configuration, the server process,
//! the CLI commands, and the demo. Integration tests drive these directly.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod progress;
pub mod telemetry;
