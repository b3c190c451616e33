//! The HTTP server's connections: renkei's own accept loop on hyper, so
//! that each connection is bounded (`axum::serve` bounds none of this):
//!
//! - at most `server.max_connections` open at once: past that, the loop
//!   stops accepting (new connections wait in the kernel's backlog) rather
//!   than running out of file descriptors;
//! - a request's headers must arrive within `server.header_read_timeout` of
//!   its first byte (a connection that sends nothing at all within that time
//!   of opening is closed too);
//! - a connection with no request in flight is closed after
//!   `server.idle_timeout` (keep-alive);
//! - on shutdown the listener closes at once, every connection finishes the
//!   request it is on and then closes; connections still busy at the drain
//!   deadline are dropped.
//!
//! (A request body's own deadline is `renkei_api::limits`'s middleware.)

use crate::config::Config;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use renkei_api::{BodyDeadline, RateLimit};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// What bounds each connection (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors kept for the database pools, logs and files when
/// `server.max_connections` is derived from the open-file limit.
const FD_HEADROOM: u64 = 256;
/// The most connections a derived `server.max_connections` allows.
const MAX_DERIVED_CONNECTIONS: u64 = 10_000;

/// The `[server]` settings, checked.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub grace: Duration,
    pub limits: ConnectionLimits,
    pub body_deadline: BodyDeadline,
    pub rate: RateLimit,
}

impl ServerSettings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let server = &config.server;
        let positive = |key: &str, value: renkei_core::SpanDuration| {
            let seconds = value.seconds();
            anyhow::ensure!(seconds > 0, "server.{key} must be at least 1s (got {value})");
            Ok(Duration::from_secs(seconds as u64))
        };
        let limits = ConnectionLimits {
            header_read_timeout: positive("header_read_timeout", server.header_read_timeout)?,
            idle_timeout: positive("idle_timeout", server.idle_timeout)?,
            max_connections: connection_cap(server.max_connections),
        };
        Ok(Self {
            grace: positive("shutdown_grace", server.shutdown_grace)?,
            limits,
            body_deadline: BodyDeadline(positive("body_read_timeout", server.body_read_timeout)?),
            rate: RateLimit { per_second: server.rate_limit_per_second, burst: server.rate_limit_burst },
        })
    }
}

/// `server.max_connections`, or (0) the open-file limit less [`FD_HEADROOM`].
fn connection_cap(configured: usize) -> usize {
    let files = open_file_limit();
    let derived =
        files.map_or(1_024 - FD_HEADROOM, |n| n.saturating_sub(FD_HEADROOM)).clamp(16, MAX_DERIVED_CONNECTIONS);
    if configured == 0 {
        tracing::info!(max_connections = derived, open_file_limit = ?files, "server.max_connections derived from the open-file limit");
        return derived as usize;
    }
    if files.is_some_and(|n| configured as u64 + FD_HEADROOM > n) {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = ?files,
            "server.max_connections leaves fewer than {FD_HEADROOM} file descriptors for the database and files"
        );
    }
    configured
}

/// The soft RLIMIT_NOFILE, when the platform tells it.
fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Open connections, for `/metrics`.
#[derive(Debug)]
pub struct ConnectionStats {
    /// One permit per connection that may open.
    slots: Arc<Semaphore>,
    max: usize,
    open: AtomicUsize,
}

impl ConnectionStats {
    pub fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max)), max, open: AtomicUsize::new(0) }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// "Not set" in the [`Activity`] instants.
const NONE: u64 = u64::MAX;

/// What a connection is doing, as its watchdog sees it: milliseconds since
/// `epoch`, [`NONE`] when unset.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight.
    idle_since: AtomicU64,
    /// The first byte read while no request was in flight (a request's head arriving).
    head_started: AtomicU64,
    /// Wakes the watchdog when its deadline may have moved.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now();
            if self.head_started.compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.changed.notify_one();
            }
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now().max(1), Ordering::Release);
            self.head_started.store(NONE, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// When the connection is due to close, and why; `None` while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |millis: u64, after: Duration| self.epoch + Duration::from_millis(millis) + after;
        let head = self.head_started.load(Ordering::Acquire);
        let idle = self.idle_since.load(Ordering::Acquire);
        Some(if head != NONE {
            (at(head, limits.header_read_timeout), Expiry::Headers)
        } else if idle == 0 {
            // Nothing read since the connection opened.
            (at(0, limits.header_read_timeout), Expiry::Headers)
        } else {
            (at(idle, limits.idle_timeout), Expiry::Idle)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Headers,
    Idle,
}

/// The socket, telling [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `listener` until `stop` resolves, then drains: the
/// listener closes, each connection closes after its current request, and
/// whatever is still open `drain` later is dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // Header and idle deadlines are the watchdog's (see `Activity`).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let draining = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = stats.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(stream, peer, router.clone(), builder.clone(), limits, draining.clone());
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            connection.await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let open = connections.len();
    draining.cancel();
    tracing::info!(connections = open, "stopped accepting; open connections finish their current request");
    let drained = tokio::time::timeout(drain, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(connections = connections.len(), "connections still busy at the drain deadline; dropped");
        connections.shutdown().await;
    }
}

/// An accept error: a connection that failed before it was accepted is
/// skipped; anything else (e.g. no file descriptors left) waits a moment.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(%error, "accepting a connection failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    draining: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { stream, activity: activity.clone() });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |request: hyper::Request<Incoming>| {
            activity.request_started();
            let activity = activity.clone();
            let mut request = request;
            // The client's address, for what is limited per address (dashboard sign-ins).
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await;
                activity.request_finished();
                response
            }
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let deadline = activity.deadline(&limits);
        let expiry = async {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at).await;
                    why
                }
                // Re-checked when the request in flight finishes.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = activity.changed.notified() => {}
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = draining.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            why = expiry => {
                if activity.deadline(&limits).is_none_or(|(at, _)| at > Instant::now()) {
                    continue;
                }
                match why {
                    Expiry::Headers => {
                        tracing::debug!("request headers not received in time; connection closed");
                        return;
                    }
                    Expiry::Idle if closing => return,
                    Expiry::Idle => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}
