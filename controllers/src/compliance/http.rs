//! The dashboard (`/`), the score API (`/api/scores`, `/api/scores/{key}`) and the SSE stream of
//! score changes (`/api/events`).

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use axum::{
    Router,
    extract::{FromRef, Path, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use bytes::Bytes;
use catalyst_policy::http::{HttpLimits, HttpRefusals, StreamSlots, long_lived};
use futures_util::stream;
use serde::de::IgnoredAny;
use tokio::sync::{RwLock, broadcast};

/// The page, embedded in the binary (plain HTML + JS, no build step).
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// One change of a score document (`doc` `None`: deleted).
#[derive(Debug, Clone)]
pub struct Change {
    /// KV key.
    pub key: String,
    /// The new document's JSON, or `None`.
    pub doc: Option<Bytes>,
}

impl Change {
    /// `{"key": …, "doc": …}` (`doc` null when deleted), the data of an SSE `score` event.
    pub fn to_json(&self) -> String {
        let doc = self.doc.as_deref().unwrap_or(b"null");
        let mut out = String::with_capacity(doc.len() + self.key.len() + 20);
        out.push_str("{\"key\":");
        out.push_str(&serde_json::to_string(&self.key).unwrap_or_default());
        out.push_str(",\"doc\":");
        out.push_str(&String::from_utf8_lossy(doc));
        out.push('}');
        out
    }
}

/// The current documents (as published: JSON bytes shared with the publisher, no second copy)
/// and the change feed.
#[derive(Debug)]
pub struct Hub {
    docs: RwLock<BTreeMap<String, Bytes>>,
    feed: broadcast::Sender<Change>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Hub {
    /// A hub whose subscribers may lag `capacity` changes before they are re-synchronised.
    pub fn new(capacity: usize) -> Self {
        Self {
            docs: RwLock::new(BTreeMap::new()),
            feed: broadcast::channel(capacity).0,
        }
    }

    /// Applies changes and tells subscribers. A document that is not JSON (e.g. a foreign
    /// value found in the KV at start) is left out, so the page and the API stay JSON.
    pub async fn apply(&self, changes: Vec<Change>) {
        let mut docs = self.docs.write().await;
        for mut c in changes {
            if c.doc
                .as_ref()
                .is_some_and(|d| serde_json::from_slice::<IgnoredAny>(d).is_err())
            {
                c.doc = None;
            }
            match &c.doc {
                Some(d) => {
                    docs.insert(c.key.clone(), d.clone());
                }
                None => {
                    docs.remove(&c.key);
                }
            }
            let _ = self.feed.send(c);
        }
    }

    /// Every current document as one JSON object by key.
    pub async fn snapshot_json(&self) -> String {
        let docs = self.docs.read().await;
        let mut out = String::with_capacity(docs.values().map(|d| d.len() + 64).sum::<usize>() + 2);
        out.push('{');
        for (i, (k, d)) in docs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(&String::from_utf8_lossy(d));
        }
        out.push('}');
        out
    }

    /// The current document of `key`.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        self.docs.read().await.get(key).cloned()
    }
}

/// What the handlers share: the documents and the cap on SSE clients.
#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    streams: StreamSlots,
}

impl FromRef<AppState> for Arc<Hub> {
    fn from_ref(state: &AppState) -> Self {
        state.hub.clone()
    }
}

impl FromRef<AppState> for StreamSlots {
    fn from_ref(state: &AppState) -> Self {
        state.streams.clone()
    }
}

/// The routes; `/api/events` serves at most as many clients as `streams` has slots.
pub fn router(hub: Arc<Hub>, streams: StreamSlots) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/scores", get(all))
        .route("/api/scores/{key}", get(one))
        .route("/api/events", get(events))
        .with_state(AppState { hub, streams })
}

/// The page with the current documents embedded (so the first paint needs no request).
async fn page(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let json = hub.snapshot_json().await.replace('<', "\\u003c");
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD.replacen("/*SNAPSHOT*/{}", &json, 1),
    )
}

fn json(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn all(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    json(hub.snapshot_json().await)
}

async fn one(State(hub): State<Arc<Hub>>, Path(key): Path<String>) -> impl IntoResponse {
    match hub.get(&key).await {
        Some(d) => ([(header::CONTENT_TYPE, "application/json")], d).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no score `{key}`\n")).into_response(),
    }
}

/// SSE: a `snapshot` event with every document, then one `score` event per change. A
/// subscriber that falls behind gets a fresh `snapshot`. The stream holds one of the
/// `max_event_streams` slots until the client goes (over the cap: `503`), and is exempt from
/// the request timeout.
async fn events(State(hub): State<Arc<Hub>>, State(streams): State<StreamSlots>) -> Response {
    let permit = match streams.open() {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let rx = hub.feed.subscribe();
    let first = snapshot_event(&hub).await;
    let s = stream::unfold(
        (hub, rx, Some(first), permit),
        |(hub, mut rx, first, permit)| async move {
            if let Some(e) = first {
                return Some((Ok::<_, Infallible>(e), (hub, rx, None, permit)));
            }
            let e = match rx.recv().await {
                Ok(c) => Event::default().event("score").data(c.to_json()),
                Err(broadcast::error::RecvError::Lagged(_)) => snapshot_event(&hub).await,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(e), (hub, rx, None, permit)))
        },
    );
    long_lived(Sse::new(s).keep_alive(KeepAlive::default()))
}

async fn snapshot_event(hub: &Hub) -> Event {
    Event::default()
        .event("snapshot")
        .data(hub.snapshot_json().await)
}

/// Serves the routes on `listener` until `shutdown` changes, through the suite's HTTP serve
/// loop ([`catalyst_policy::http::serve`]) within `limits`, with at most `max_event_streams`
/// SSE clients; refusals are counted in `refusals`
/// (`catalyst_controller_compliance_http_refused_total`).
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    limits: HttpLimits,
    max_event_streams: usize,
    refusals: HttpRefusals,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let streams = StreamSlots::new(max_event_streams, refusals.clone());
    catalyst_policy::http::serve(
        listener,
        router(hub, streams),
        limits,
        refusals,
        async move {
            let _ = shutdown.changed().await;
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use catalyst_policy::http::Refusal;
    use prometheus_client::registry::Registry;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        max_request_bytes: 8192,
        max_connections: 8,
    };

    const GET_EVENTS: &[u8] = b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n";

    async fn endpoint(
        max_streams: usize,
    ) -> (
        SocketAddr,
        Arc<Hub>,
        HttpRefusals,
        tokio::sync::watch::Sender<bool>,
    ) {
        let mut registry = Registry::with_prefix("catalyst_controller_compliance");
        let refusals = HttpRefusals::register(&mut registry);
        let hub = Arc::new(Hub::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(
            listener,
            hub.clone(),
            LIMITS,
            max_streams,
            refusals.clone(),
            stopped,
        ));
        (addr, hub, refusals, stop)
    }

    /// Reads from `s` until `needle` has arrived (bounded by 10 s).
    async fn read_until(s: &mut TcpStream, needle: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0_u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no `{needle}` in {}", String::from_utf8_lossy(&got)))
                .unwrap();
            assert!(
                n > 0,
                "closed before `{needle}`: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn sse_clients_are_capped_and_a_stream_outlives_the_request_timeout() {
        let (addr, hub, refusals, _stop) = endpoint(1).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(GET_EVENTS).await.unwrap();
        let head = read_until(&mut first, "event: snapshot").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");

        // A second client over `max_event_streams`: 503, counted.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(GET_EVENTS).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert_eq!(refusals.get(Refusal::TooManyStreams), 1);

        // Past the request timeout the first stream still delivers changes.
        tokio::time::sleep(LIMITS.request_timeout * 2).await;
        hub.apply(vec![Change {
            key: "org.env.app".into(),
            doc: Some(Bytes::from_static(b"{\"score\":90}")),
        }])
        .await;
        let ev = read_until(&mut first, "event: score").await;
        assert!(ev.contains("org.env.app"), "{ev}");
        assert_eq!(refusals.get(Refusal::Timeout), 0);

        // Its slot is free again once the client goes.
        drop(first);
        let mut served = false;
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(GET_EVENTS).await.unwrap();
            let mut head = [0_u8; 12];
            if s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "the stream slot was not released");
    }

    #[tokio::test]
    async fn a_silent_dashboard_client_is_disconnected_and_counted() {
        let (addr, _hub, refusals, _stop) = endpoint(1).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(refusals.get(Refusal::Timeout), 1);
    }
}
