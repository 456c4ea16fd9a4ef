//! NATS JetStream for Continuum: KV `continuum-leases` (the lease), `continuum-state` (the
//! persisted switchover state machine), `dns-failover` (what catalyst-dns answers with), and the
//! audit subject `catalyst.audit.continuum`. Every write is a compare-and-set on the entry
//! revision; nothing here overwrites a value it has not read.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

/// Bucket and subject names.
#[derive(Clone, Debug)]
pub struct Names {
    /// Lease bucket.
    pub leases: String,
    /// State bucket.
    pub state: String,
    /// DNS failover bucket (read by catalyst-dns).
    pub dns: String,
    /// Audit subject.
    pub audit: String,
    /// Replicas of each bucket (3 on a 3-node cluster).
    pub replicas: usize,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            leases: "continuum-leases".into(),
            state: "continuum-state".into(),
            dns: "dns-failover".into(),
            audit: "catalyst.audit.continuum".into(),
            replicas: 1,
        }
    }
}

/// The three buckets plus the client for audit events.
#[derive(Clone, Debug)]
pub struct Store {
    /// Client (audit publishes).
    pub client: async_nats::Client,
    /// Leases.
    pub leases: kv::Store,
    /// State.
    pub state: kv::Store,
    /// DNS failover.
    pub dns: kv::Store,
    /// Names.
    pub names: Names,
}

/// A decoded entry with its revision.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// Value, `None` when absent or deleted.
    pub value: Option<T>,
    /// Revision (0 when the key never existed).
    pub revision: u64,
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    what: &str,
) -> anyhow::Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: what.to_string(),
        history: 5,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create KV bucket `{name}`"))
}

impl Store {
    /// Connect (retrying the first connection) and open or create the buckets.
    pub async fn connect(
        url: &str,
        auth: &catalyst_policy::nats::NatsAuth,
        name: &str,
        names: Names,
    ) -> anyhow::Result<Self> {
        let servers = url
            .split(',')
            .map(|u| {
                u.trim()
                    .parse::<async_nats::ServerAddr>()
                    .with_context(|| format!("NATS server `{u}` is not a valid URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Servers in the order given (the region's own node first), and a dead or cut-off
        // server noticed within seconds (pings every 2 s; two missed end the connection), so a
        // controller on the majority side of a partition reaches a quorum quickly.
        let client = catalyst_policy::nats::options(auth, name)
            .await?
            .retain_servers_order()
            .ping_interval(Duration::from_secs(2))
            .retry_on_initial_connect()
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(servers)
            .await
            .with_context(|| format!("NATS {url}: cannot connect"))?;
        let js = jetstream::new(client.clone());
        let leases = bucket(
            &js,
            &names.leases,
            names.replicas,
            "Continuum leases (catalyst.lease/v1)",
        )
        .await?;
        let state = bucket(
            &js,
            &names.state,
            names.replicas,
            "Continuum switchover state",
        )
        .await?;
        let dns = bucket(
            &js,
            &names.dns,
            names.replicas,
            "DNS failover state read by catalyst-dns",
        )
        .await?;
        Ok(Self {
            client,
            leases,
            state,
            dns,
            names,
        })
    }

    /// Read `key` from `kv` as JSON (a value that does not parse is an error naming the key).
    ///
    /// The read goes to the stream's leader (`STREAM.MSG.GET`), not to any replica (`DIRECT.GET`,
    /// what KV reads use by default): a replica cut off in a partition, or one still catching
    /// up after it, would otherwise serve an old lease and an old state — the controller of a
    /// healed region would keep seeing itself as holder. On the minority side of a partition
    /// there is no leader and the read fails, which is what the lease logic needs. Still not
    /// linearizable: a node that led the stream before a partition answers until it hears of the
    /// new term, so decisions go by compare-and-set (and a rejoin confirms its read first).
    pub async fn read<T: DeserializeOwned>(
        kv: &kv::Store,
        key: &str,
    ) -> anyhow::Result<Versioned<T>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = format!("{}{key}", kv.prefix);
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            kv.stream.get_last_raw_message_by_subject(&subject),
        )
        .await
        .context("KV read timed out")?;
        let msg = match got {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(Versioned {
                    value: None,
                    revision: 0,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read KV key `{key}`")),
        };
        let deleted = msg
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        Ok(if deleted {
            Versioned {
                value: None,
                revision: msg.sequence,
            }
        } else {
            Versioned {
                value: Some(
                    serde_json::from_slice(&msg.payload)
                        .with_context(|| format!("KV key `{key}` holds an invalid value"))?,
                ),
                revision: msg.sequence,
            }
        })
    }

    /// Compare-and-set: create when `revision` is 0, else update on `revision`. Returns the new
    /// revision; a lost race is an error.
    pub async fn cas<T: Serialize>(
        kv: &kv::Store,
        key: &str,
        value: &T,
        revision: u64,
    ) -> anyhow::Result<u64> {
        let bytes = Bytes::from(serde_json::to_vec(value)?);
        let op = async {
            if revision == 0 {
                kv.create(key, bytes).await.map_err(anyhow::Error::from)
            } else {
                kv.update(key, bytes, revision)
                    .await
                    .map_err(anyhow::Error::from)
            }
        };
        tokio::time::timeout(Duration::from_secs(2), op)
            .await
            .context("KV write timed out")?
            .with_context(|| format!("compare-and-set of `{key}` at revision {revision} lost"))
    }

    /// Publish an audit event and wait for the server to have it.
    pub async fn audit<T: Serialize>(&self, event: &T) -> anyhow::Result<()> {
        self.client
            .publish(
                self.names.audit.clone(),
                Bytes::from(serde_json::to_vec(event)?),
            )
            .await
            .context("cannot publish the audit event")?;
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .context("audit flush timed out")?
            .context("audit flush failed")
    }
}

/// The KV key of a Continuum (`namespace.name`; dots in either become `_`, so a name can never
/// add a key level).
pub fn key(namespace: &str, name: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("{}.{}", clean(namespace), clean(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sanitised() {
        assert_eq!(super::key("db", "orders"), "db.orders");
        assert_eq!(super::key("a.b", "c d*"), "a_b.c_d_");
    }
}
