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
use bytes::Bytes;
use futures_util::stream::{self, Stream};
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
/// subscriber that falls behind gets a fresh `snapshot`.
async fn events(State(hub): State<Arc<Hub>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.feed.subscribe();
    let first = snapshot_event(&hub).await;
    let s = stream::unfold((hub, rx, Some(first)), |(hub, mut rx, first)| async move {
        if let Some(e) = first {
            return Some((Ok(e), (hub, rx, None)));
        }
        let e = match rx.recv().await {
            Ok(c) => Event::default().event("score").data(c.to_json()),
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
        .data(hub.snapshot_json().await)
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
