//! The NATS shell: signals and health events in (`JetStream` consumers that replay on start),
//! scores out (KV `policy-rollup`, stream `CATALYST_SCORES`).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    kv, stream,
};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{config::NatsSettings, row::Source};

/// Subjects of the agent's signals.
pub const SIGNALS: &str = "catalyst.signals.>";
/// Subjects of catalyst-dns health events.
pub const HEALTH: &str = "catalyst.health.>";
/// Prefix of score-change subjects.
pub const SCORES_PREFIX: &str = "catalyst.scores";

/// A message from an input consumer.
#[derive(Debug)]
pub enum Inbound {
    /// A payload on `subject`, stored at `at_ms`; `caught_up` when it was the last message
    /// pending at the time.
    Message {
        /// Which input.
        source: Source,
        /// Subject.
        subject: String,
        /// Payload.
        payload: bytes::Bytes,
        /// Stream time, Unix ms.
        at_ms: i64,
        /// No message was pending after this one.
        caught_up: bool,
    },
    /// The consumer replayed everything that was stored when it started.
    CaughtUp(Source),
}

/// The outputs on NATS.
#[derive(Clone)]
pub struct Outputs {
    js: jetstream::Context,
    kv: kv::Store,
}

/// Connects and makes sure the streams and the KV bucket exist.
///
/// # Errors
/// The server is unreachable or refuses to create them.
pub async fn connect(s: &NatsSettings) -> anyhow::Result<(jetstream::Context, Outputs)> {
    let client =
        catalyst_policy::nats::connect(&s.url, &s.auth(), "catalyst-controllers compliance", true)
            .await
            .with_context(|| format!("compliance.nats: cannot connect to {}", s.url))?;
    let js = jetstream::new(client);
    let kv = match js.get_key_value(&s.bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: s.bucket.clone(),
                description: "Catalyst compliance scores (catalyst.score/v1)".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create KV bucket `{}`", s.bucket))?,
    };
    js.get_or_create_stream(stream::Config {
        name: s.scores_stream.clone(),
        subjects: vec![format!("{SCORES_PREFIX}.>")],
        max_age: Duration::from_secs(s.scores_max_age_s),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create stream `{}`", s.scores_stream))?;
    Ok((js.clone(), Outputs { js, kv }))
}

impl Outputs {
    /// Every value in the bucket (what a previous run published).
    ///
    /// # Errors
    /// The bucket cannot be listed.
    pub async fn existing(&self) -> anyhow::Result<BTreeMap<String, bytes::Bytes>> {
        let mut out = BTreeMap::new();
        let mut keys = self.kv.keys().await.context("cannot list the KV keys")?;
        while let Some(k) = keys.next().await {
            let k = k.context("cannot list the KV keys")?;
            if let Some(v) = self.kv.get(&k).await.context("cannot read a KV value")? {
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Writes one change to the KV (put or delete) and, for a put, to the scores stream.
    /// Returns (KV ok, stream ok).
    pub async fn write(&self, key: &str, value: Option<&bytes::Bytes>) -> (bool, bool) {
        match value {
            Some(bytes) => {
                let kv_ok = match self.kv.put(key, bytes.clone()).await {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(key, error = %e, "KV put failed");
                        false
                    }
                };
                let subject = format!("{SCORES_PREFIX}.{key}");
                let stream_ok = match self.js.publish(subject, bytes.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(e) => {
                        warn!(key, error = %e, "score stream publish failed");
                        false
                    }
                };
                (kv_ok, stream_ok)
            }
            None => match self.kv.delete(key).await {
                Ok(()) => (true, true),
                Err(e) => {
                    warn!(key, error = %e, "KV delete failed");
                    (false, true)
                }
            },
        }
    }
}

/// Consumes `subjects` of `stream_name` from `deliver` on, forever, into `tx`. The durable
/// consumer is re-created at start so that a restarted aggregator replays its inputs.
///
/// # Errors
/// The stream or consumer cannot be created.
pub async fn consume(
    js: jetstream::Context,
    stream_cfg: stream::Config,
    durable: String,
    deliver: DeliverPolicy,
    source: Source,
    tx: mpsc::Sender<Inbound>,
) -> anyhow::Result<()> {
    let name = stream_cfg.name.clone();
    let filter = stream_cfg.subjects.first().cloned().unwrap_or_default();
    let stream = js
        .get_or_create_stream(stream_cfg)
        .await
        .with_context(|| format!("cannot get or create stream `{name}`"))?;
    // Re-position: the rows live in memory, so a (re)start replays the window.
    let _ = stream.delete_consumer(&durable).await;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            deliver_policy: deliver,
            ack_policy: AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: Duration::from_hours(1),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create consumer `{durable}` on `{name}`"))?;
    // The pending count right after creation says whether there is anything to replay.
    let pending = consumer.info().await.map_or(0, |i| i.num_pending);
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("cannot consume `{name}`"))?;
    info!(stream = %name, consumer = %durable, pending, "replaying");
    if pending == 0 && tx.send(Inbound::CaughtUp(source)).await.is_err() {
        return Ok(());
    }
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                warn!(stream = %name, error = %e, "consumer error; continuing");
                continue;
            }
        };
        let (at_ms, caught_up) = m.info().map_or((super::inputs::now_ms(), false), |i| {
            (
                i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                i.pending == 0,
            )
        });
        let msg = Inbound::Message {
            source,
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
            at_ms,
            caught_up,
        };
        if tx.send(msg).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The signals input: stream `CATALYST_SIGNALS` from `replay_s` ago.
pub fn signals_input(s: &NatsSettings) -> (stream::Config, DeliverPolicy) {
    let start = time::OffsetDateTime::now_utc()
        - time::Duration::seconds(i64::try_from(s.replay_s).unwrap_or(i64::MAX));
    (
        stream::Config {
            name: s.signals_stream.clone(),
            subjects: vec![SIGNALS.into()],
            max_age: Duration::from_hours(24),
            ..Default::default()
        },
        DeliverPolicy::ByStartTime { start_time: start },
    )
}

/// The health input: stream `CATALYST_HEALTH` keeping the last event per target.
pub fn health_input(s: &NatsSettings) -> (stream::Config, DeliverPolicy) {
    (
        stream::Config {
            name: s.health_stream.clone(),
            subjects: vec![HEALTH.into()],
            max_messages_per_subject: 1,
            ..Default::default()
        },
        DeliverPolicy::LastPerSubject,
    )
}
