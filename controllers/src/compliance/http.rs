//! The dashboard (`/`), the score API (`/api/scores`, `/api/scores/{key}`) and the SSE stream of
//! score changes (`/api/events`).

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{
        IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::stream::{self, Stream};
use serde_json::Value;
use tokio::sync::{RwLock, broadcast};

/// The page, embedded in the binary (plain HTML + JS, no build step).
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// One change of a score document (`doc` null: deleted).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// KV key.
    pub key: String,
    /// The new document, or null.
    pub doc: Option<Value>,
}

/// The current documents and the change feed.
#[derive(Debug)]
pub struct Hub {
    docs: RwLock<BTreeMap<String, Value>>,
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

    /// Applies changes and tells subscribers.
    pub async fn apply(&self, changes: Vec<Change>) {
        let mut docs = self.docs.write().await;
        for c in changes {
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

    /// The current documents.
    pub async fn snapshot(&self) -> BTreeMap<String, Value> {
        self.docs.read().await.clone()
    }
}

/// The routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/scores", get(all))
        .route("/api/scores/{key}", get(one))
        .route("/api/events", get(events))
        .with_state(hub)
}

/// The page with the current documents embedded (so the first paint needs no request).
async fn page(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let json = serde_json::to_string(&hub.snapshot().await)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD.replacen("/*SNAPSHOT*/{}", &json, 1),
    )
}

fn json(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn all(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    json(serde_json::to_string(&hub.snapshot().await).unwrap_or_default())
}

async fn one(State(hub): State<Arc<Hub>>, Path(key): Path<String>) -> impl IntoResponse {
    match hub.docs.read().await.get(&key) {
        Some(d) => json(d.to_string()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no score `{key}`\n")).into_response(),
    }
}

/// SSE: a `snapshot` event with every document, then one `score` event per change. A
/// subscriber that falls behind gets a fresh `snapshot`.
async fn events(State(hub): State<Arc<Hub>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.feed.subscribe();
    let first = snapshot_event(&hub).await;
    let s = stream::unfold((hub, rx, Some(first)), |(hub, mut rx, first)| async move {
        if let Some(e) = first {
            return Some((Ok(e), (hub, rx, None)));
        }
        let e = match rx.recv().await {
            Ok(c) => Event::default()
                .event("score")
                .data(serde_json::to_string(&c).unwrap_or_default()),
            Err(broadcast::error::RecvError::Lagged(_)) => snapshot_event(&hub).await,
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(e), (hub, rx, None)))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

async fn snapshot_event(hub: &Hub) -> Event {
    Event::default()
        .event("snapshot")
        .data(serde_json::to_string(&hub.snapshot().await).unwrap_or_default())
}

/// Serves the routes on `listener` until `shutdown` changes.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(hub))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}
