//! Ingestion: the HTTP API through which a company's systems send members,
//! links (ID連携) and events, and the file imports that do the same in bulk.

pub mod api;
pub mod error;
pub mod import;
pub mod metrics;

pub use api::{IngestState, router};
pub use error::ApiError;
pub use metrics::IngestMetrics;
