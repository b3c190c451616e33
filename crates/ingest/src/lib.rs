//! Ingestion in bulk: the file imports (`renkei import members|events`) that
//! load members, links and events the way the `/v1` API (in `renkei-api`)
//! does one request at a time.

pub mod import;
