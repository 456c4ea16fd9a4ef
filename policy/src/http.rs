//! The suite's one HTTP serve loop, for every program's plain-HTTP listener (`/metrics` and
//! probes of the agent, catalyst-dns and the controllers; the compliance dashboard and its SSE
//! stream).
//!
//! It is axum on hyper's HTTP/1 with the limits `axum::serve` does not expose:
//!
//! - one request per connection, answered within `request_timeout` from accept to the last byte
//!   (a slow or silent client is disconnected), except responses marked [`long_lived`] (SSE),
//!   which run until the client goes and are capped in number by a [`StreamSlots`] instead;
//! - a request head (request line and headers) of at most `max_request_bytes`, larger ones
//!   answered `431`;
//! - at most `max_connections` connections at once; one over the cap is answered `503` and
//!   closed.
//!
//! Each refusal is counted in an [`HttpRefusals`] family that each program registers under its
//! own prefix (`<prefix>_http_refused_total{reason=…}`).

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tower::ServiceExt as _;

/// Smallest `max_request_bytes` (hyper's smallest read buffer).
pub const MIN_REQUEST_BYTES: usize = 8192;
/// Default `request_timeout_ms` of every program's HTTP listener.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;
/// Default `max_request_bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16_384;
/// Default `max_connections` (a metrics endpoint has a handful of scrapers and probes).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How long the accept loop waits after an accept error (out of file descriptors) before it
/// accepts again, so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer to a connection over `max_connections`.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\n\
too many connections\n";

/// A limit that is out of range; it shows as `field: reason` (the caller adds its section,
/// e.g. `metrics.`).
#[derive(Debug, PartialEq, Eq)]
pub enum LimitError {
    /// `request_timeout_ms` is 0.
    RequestTimeout,
    /// `max_request_bytes` is below [`MIN_REQUEST_BYTES`].
    RequestBytes {
        /// The configured value.
        bytes: usize,
    },
    /// `max_connections` is 0.
    Connections,
}

impl LimitError {
    /// The field, as in the configuration (`max_connections`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::RequestTimeout => "request_timeout_ms",
            Self::RequestBytes { .. } => "max_request_bytes",
            Self::Connections => "max_connections",
        }
    }

    /// What is wrong with its value.
    pub fn reason(&self) -> String {
        match self {
            Self::RequestTimeout | Self::Connections => "must be at least 1".to_owned(),
            Self::RequestBytes { bytes } => {
                format!("{bytes} is below the minimum of {MIN_REQUEST_BYTES}")
            }
        }
    }
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field(), self.reason())
    }
}

impl std::error::Error for LimitError {}

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a connection may take from accept to the end of its one answer.
    pub request_timeout: Duration,
    /// Largest request head; larger ones get `431`.
    pub max_request_bytes: usize,
    /// Connections served at once; more are answered `503`.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl HttpLimits {
    /// The limits of a configuration section's `request_timeout_ms`, `max_request_bytes` and
    /// `max_connections`, checked.
    pub fn from_config(
        request_timeout_ms: u64,
        max_request_bytes: usize,
        max_connections: usize,
    ) -> Result<Self, LimitError> {
        if request_timeout_ms == 0 {
            return Err(LimitError::RequestTimeout);
        }
        if max_request_bytes < MIN_REQUEST_BYTES {
            return Err(LimitError::RequestBytes {
                bytes: max_request_bytes,
            });
        }
        if max_connections == 0 {
            return Err(LimitError::Connections);
        }
        Ok(Self {
            request_timeout: Duration::from_millis(request_timeout_ms),
            max_request_bytes,
            max_connections,
        })
    }
}

/// Why a connection or request was refused (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The exchange did not finish within `request_timeout`.
    Timeout,
    /// The request head was larger than `max_request_bytes` (`431`).
    TooLarge,
    /// The connection was over `max_connections` (`503`).
    TooManyConnections,
    /// A long-lived stream was over its cap (`503`).
    TooManyStreams,
}

impl Refusal {
    const ALL: [Self; 4] = [
        Self::Timeout,
        Self::TooLarge,
        Self::TooManyConnections,
        Self::TooManyStreams,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyStreams => "too_many_streams",
        }
    }
}

/// `http_refused_total{reason}`: refusals of one listener, every reason created at zero.
#[derive(Clone, Debug, Default)]
pub struct HttpRefusals {
    counters: [Counter; 4],
}

impl HttpRefusals {
    /// Registers `http_refused` under `registry` (the caller's prefixed registry).
    pub fn register(registry: &mut Registry) -> Self {
        let family = prometheus_client::metrics::family::Family::<
            [(&'static str, &'static str); 1],
            Counter,
        >::default();
        let counters =
            Refusal::ALL.map(|r| family.get_or_create(&[("reason", r.as_str())]).clone());
        registry.register(
            "http_refused",
            "HTTP connections and requests refused, by reason (timeout, too_large, \
             too_many_connections, too_many_streams)",
            family,
        );
        Self { counters }
    }

    /// Counts one refusal.
    pub fn count(&self, reason: Refusal) {
        self.counters[reason as usize].inc();
    }

    /// Refusals so far for `reason`.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.counters[reason as usize].get()
    }
}

/// Marks a response as a long-lived stream (SSE): the whole-exchange timeout does not apply
/// to its connection once the response head is out. Cap such streams with [`StreamSlots`].
pub fn long_lived(response: impl IntoResponse) -> Response {
    let mut r = response.into_response();
    r.extensions_mut().insert(LongLived);
    r
}

#[derive(Clone, Copy, Debug)]
struct LongLived;

/// A cap on concurrent long-lived streams of one route.
#[derive(Clone, Debug)]
pub struct StreamSlots {
    slots: Arc<Semaphore>,
    refusals: HttpRefusals,
}

/// One open stream; its slot is free again when this is dropped (with the stream).
#[derive(Debug)]
pub struct StreamPermit {
    _slot: OwnedSemaphorePermit,
}

impl StreamSlots {
    /// At most `max` streams at once; refusals counted as `too_many_streams` in `refusals`.
    pub fn new(max: usize, refusals: HttpRefusals) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            refusals,
        }
    }

    /// A slot, or the `503` answer (counted) when every slot is taken.
    #[expect(
        clippy::result_large_err,
        reason = "the error is the answer a handler returns as it is"
    )]
    pub fn open(&self) -> Result<StreamPermit, Response> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(StreamPermit { _slot: p });
        }
        self.refusals.count(Refusal::TooManyStreams);
        Err((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "too many streams\n",
        )
            .into_response())
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves (pass
/// `std::future::pending()` to serve until the task is dropped). Open connections are closed
/// when serving stops.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    refusals: HttpRefusals,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    // Connections being answered `503`: as many again, so a flood costs a bounded number of
    // tasks; past that a refused connection is closed without an answer.
    let refusing = Arc::new(Semaphore::new(limits.max_connections));
    // Dropped when serving stops: every connection task sees it and closes.
    let (stop, stopped) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            tokio::spawn(connection(
                stream,
                app.clone(),
                limits,
                refusals.clone(),
                stopped.clone(),
                permit,
            ));
        } else {
            refusals.count(Refusal::TooManyConnections);
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tokio::spawn(refuse(stream, limits.request_timeout, permit));
            }
        }
    }
    drop(stop);
    Ok(())
}

/// Answers `503`, then reads what the client sent until it closes (so the close is not a reset
/// that could discard the answer), within `timeout`.
async fn refuse(mut stream: TcpStream, timeout: Duration, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        let mut sink = [0_u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection: one request, within the limits.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: HttpLimits,
    refusals: HttpRefusals,
    mut stopped: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    let streaming = Arc::new(AtomicBool::new(false));
    let flag = streaming.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let flag = flag.clone();
        async move {
            let Ok(response) = app.oneshot(req).await;
            if response.extensions().get::<LongLived>().is_some() {
                flag.store(true, Ordering::Release);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.max_request_bytes.max(MIN_REQUEST_BYTES))
        .keep_alive(false);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(limits.request_timeout);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_parse_too_large() {
                        refusals.count(Refusal::TooLarge);
                    } else if e.is_timeout() {
                        refusals.count(Refusal::Timeout);
                    }
                }
                return;
            }
            () = &mut deadline, if !deadline_passed => {
                if streaming.load(Ordering::Acquire) {
                    deadline_passed = true;
                } else {
                    // Dropping the connection closes the socket.
                    refusals.count(Refusal::Timeout);
                    return;
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{body::Body, routing::get};
    use futures_util::{StreamExt as _, stream};

    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        max_request_bytes: MIN_REQUEST_BYTES,
        max_connections: 2,
    };

    /// `/` answers `ok`; `/stream` is a long-lived stream (one line, then nothing until the
    /// client goes) capped at one.
    async fn endpoint(limits: HttpLimits) -> (SocketAddr, HttpRefusals) {
        let mut registry = Registry::with_prefix("test");
        let refusals = HttpRefusals::register(&mut registry);
        let slots = StreamSlots::new(1, refusals.clone());
        let app = axum::Router::new()
            .route("/", get(|| async { "ok\n" }))
            .route(
                "/stream",
                get(move || {
                    let slots = slots.clone();
                    async move {
                        match slots.open() {
                            Ok(permit) => {
                                let body =
                                    stream::once(async { Ok::<_, Infallible>("data: hi\n\n") })
                                        .chain(stream::pending())
                                        .map(move |x| {
                                            let _held = &permit;
                                            x
                                        });
                                long_lived(Body::from_stream(body))
                            }
                            Err(refused) => refused,
                        }
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            app,
            limits,
            refusals.clone(),
            std::future::pending(),
        ));
        (addr, refusals)
    }

    /// Sends `request` and reads until the server closes (bounded by 10 s).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before reading all of an oversized request.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Opens `/stream` and reads until its first event is in.
    async fn open_stream(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0_u8; 512];
        while !String::from_utf8_lossy(&got).contains("data: hi") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("stream answers")
                .unwrap();
            assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        s
    }

    #[tokio::test]
    async fn answers_within_the_limits() {
        let (addr, refusals) = endpoint(LIMITS).await;
        let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        for reason in Refusal::ALL {
            assert_eq!(refusals.get(reason), 0, "{reason:?}");
        }
    }

    #[tokio::test]
    async fn a_silent_or_slow_client_is_disconnected_and_counted() {
        let (addr, refusals) = endpoint(LIMITS).await;
        for (i, partial) in [&b""[..], &b"GET / HTTP/1.1\r\nHost"[..]]
            .into_iter()
            .enumerate()
        {
            let r = exchange(addr, partial).await;
            assert!(!r.contains(" 200 "), "answered an incomplete request: {r}");
            assert_eq!(refusals.get(Refusal::Timeout), i as u64 + 1);
        }
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431_and_is_counted() {
        let (addr, refusals) = endpoint(LIMITS).await;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(2 * MIN_REQUEST_BYTES)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(
            !r.contains(" 200 "),
            "answered an oversized request: {r:.80}"
        );
        // The answer may be lost to the reset of a close with unread request bytes.
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r:.80}");
        assert_eq!(refusals.get(Refusal::TooLarge), 1);
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_gets_503_and_is_counted() {
        let limits = HttpLimits {
            // Long: the held connections must outlive the refused one.
            request_timeout: Duration::from_secs(30),
            ..LIMITS
        };
        let (addr, refusals) = endpoint(limits).await;
        // Two connections (the cap) held: one stream, one client that sends nothing.
        let _stream = open_stream(addr).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        // Accepted in order, so the silent one holds the second slot once this is refused.
        let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert_eq!(refusals.get(Refusal::TooManyConnections), 1);
        drop(silent);
        // The slot comes back when a connection ends.
        let mut r = String::new();
        for _ in 0..100 {
            r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }

    #[tokio::test]
    async fn a_long_lived_stream_outlives_the_timeout_and_streams_are_capped() {
        let (addr, refusals) = endpoint(HttpLimits {
            max_connections: 8,
            ..LIMITS
        })
        .await;
        let mut first = open_stream(addr).await;
        let r = exchange(addr, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert_eq!(refusals.get(Refusal::TooManyStreams), 1);
        // Past the 300 ms exchange timeout the stream is still open (a closed one reads 0).
        tokio::time::sleep(LIMITS.request_timeout * 2).await;
        let mut buf = [0_u8; 64];
        let still_open =
            tokio::time::timeout(Duration::from_millis(100), first.read(&mut buf)).await;
        assert!(still_open.is_err(), "stream ended: {still_open:?}");
        assert_eq!(refusals.get(Refusal::Timeout), 0);
        // Its slot is free again once the client goes.
        drop(first);
        let mut ok = false;
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0_u8; 12];
            if s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "stream slot not released");
    }

    #[test]
    fn limits_are_checked_with_the_field_named() {
        assert_eq!(
            HttpLimits::from_config(0, 16_384, 1)
                .unwrap_err()
                .to_string(),
            "request_timeout_ms: must be at least 1"
        );
        assert_eq!(
            HttpLimits::from_config(1, 100, 1).unwrap_err().to_string(),
            "max_request_bytes: 100 is below the minimum of 8192"
        );
        assert_eq!(
            HttpLimits::from_config(1, 8192, 0).unwrap_err().to_string(),
            "max_connections: must be at least 1"
        );
        assert_eq!(
            HttpLimits::from_config(5000, 16_384, 64).unwrap(),
            HttpLimits::default()
        );
    }
}
