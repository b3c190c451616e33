//! Limits on what one request may take: the time to send its body
//! ([`BodyDeadline`], `server.body_read_timeout`), and the requests per
//! second of one API key ([`KeyRateLimits`], `server.rate_limit_per_second`).
//! Both answer with the JSON error: 408 `body_timeout`, 429 `rate_limited`
//! with `Retry-After`.

use crate::error::{ApiError, ErrorCode};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http_body::{Frame, SizeHint};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The body error when a request's body was not received in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?} (server.body_read_timeout)")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once `limit` has passed
/// since the request arrived, however the bytes trickle in.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `server.body_read_timeout`: how long a request's whole body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// Middleware: the request's body must arrive within the [`BodyDeadline`].
pub async fn limit_body_time(
    State(BodyDeadline(limit)): State<BodyDeadline>,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|inner| {
        if http_body::Body::is_end_stream(&inner) {
            return inner;
        }
        Body::new(DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit })
    });
    next.run(request).await
}

/// True when `error` (a body rejection) comes from a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// `server.rate_limit_per_second`: requests per second and burst for one API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// One token bucket per configured API key (by its position in `server.api_keys`).
pub struct KeyRateLimits {
    limiter: Option<DefaultKeyedRateLimiter<usize>>,
}

impl KeyRateLimits {
    /// No limit when `limit` is `None` or its rate is 0.
    pub fn new(limit: Option<RateLimit>) -> Self {
        let limiter = limit.and_then(|limit| {
            let rate = NonZeroU32::new(limit.per_second)?;
            // governor's default burst equals the rate.
            let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
            Some(governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        Self { limiter }
    }

    /// Takes one request of key `index`, or the 429 to answer.
    pub fn check(&self, index: usize) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&index).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(
                ErrorCode::RateLimited,
                format!("too many requests for this API key (server.rate_limit_per_second); retry in {wait:?}"),
            )
            .retry_after(seconds.max(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_429_with_retry_after() {
        let limits = KeyRateLimits::new(Some(RateLimit { per_second: 1, burst: 3 }));
        for _ in 0..3 {
            assert!(limits.check(0).is_ok());
        }
        let refused = limits.check(0).expect_err("over the burst");
        assert_eq!((refused.code, refused.retry_after), (ErrorCode::RateLimited, Some(1)));
        assert!(limits.check(1).is_ok(), "each key has its own bucket");
        let off = KeyRateLimits::new(Some(RateLimit { per_second: 0, burst: 0 }));
        assert!((0..1_000).all(|_| off.check(0).is_ok()), "a rate of 0 is no limit");
    }
}
