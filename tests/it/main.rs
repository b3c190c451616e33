//! renkei's integration tests as one binary (one link, one process, as
//! zero2prod's `tests/api/`): the server over HTTP on both backends, the CLI
//! as an operator runs it, configuration, and the crash test.

mod api;
mod campaigns_api;
mod channel_budget;
mod cli_campaigns;
mod cli_check;
mod cli_import;
mod cli_segments;
mod common;
mod config;
mod crash;
mod dashboard;
mod dashboard_browser;
mod fanout;
mod limits;
mod outage;
mod relay;
mod replies;
mod segments;
mod shutdown;
mod webhook_waits;
