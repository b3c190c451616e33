//! The request line and headers: a method a route does not answer, a URI
//! or headers larger than renkei reads, each answered with the JSON error
//! (hyper's own limits, a 64 KiB URI or ~400 KiB of headers, answer before
//! any of this runs, with an empty body).

use crate::error::{ApiError, ErrorCode};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The longest URI (path and query) renkei reads.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names, values) renkei reads.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The fallback for a route that exists but not with this method (the
/// router keeps its `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not answer this method; see the Allow header")
}

/// Middleware: 414 and 431 with the JSON error for a URI or headers past
/// [`MAX_URI_BYTES`] and [`MAX_HEADER_BYTES`].
pub async fn limit_head(request: Request, next: Next) -> Response {
    let uri = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        let message = format!("the URI is {uri} bytes; at most {MAX_URI_BYTES} are read");
        return ApiError::new(ErrorCode::UriTooLong, message).into_response();
    }
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers > MAX_HEADER_BYTES {
        let message = format!("the headers are {headers} bytes; at most {MAX_HEADER_BYTES} are read");
        return ApiError::new(ErrorCode::HeadersTooLarge, message).into_response();
    }
    next.run(request).await
}
