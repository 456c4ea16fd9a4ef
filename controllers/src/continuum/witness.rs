//! Witness quorum: read `_continuum.<group>.<zone>` TXT directly from each catalyst-dns instance
//! (not through a resolver) and agree when enough of them report the same holder and epoch.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};
use tokio::net::UdpSocket;

/// What one witness serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seen {
    /// Active region.
    pub active: String,
    /// Epoch.
    pub epoch: u64,
    /// Lease holder (`-` when unknown).
    pub holder: String,
}

/// Parse `active=<r> epoch=<n> holder=<h>` (also as `dig +short` prints it, in quotes).
pub fn parse(txt: &str) -> Option<Seen> {
    let mut active = None;
    let mut epoch = None;
    let mut holder = None;
    for kv in txt.trim().trim_matches('"').split_whitespace() {
        match kv.split_once('=')? {
            ("active", v) => active = Some(v.to_string()),
            ("epoch", v) => epoch = v.parse().ok(),
            ("holder", v) => holder = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Seen {
        active: active?,
        epoch: epoch?,
        holder: holder?,
    })
}

/// Ask one instance.
pub async fn ask(
    server: SocketAddr,
    group: &str,
    zone: &str,
    timeout: Duration,
) -> anyhow::Result<Seen> {
    let name = Name::from_ascii(format!(
        "_continuum.{group}.{}.",
        zone.trim_end_matches('.')
    ))
    .with_context(|| format!("bad witness name for group `{group}` in zone `{zone}`"))?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0) ^ 0x5a5a;
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(name, RecordType::TXT));
    let bytes = msg.to_vec()?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(timeout, sock.recv(&mut buf))
        .await
        .with_context(|| format!("witness {server} did not answer"))??;
    let resp = Message::from_vec(&buf[..n])?;
    for r in &resp.answers {
        if let RData::TXT(t) = &r.data {
            let s: String = t
                .txt_data
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            if let Some(seen) = parse(&s) {
                return Ok(seen);
            }
        }
    }
    anyhow::bail!("witness {server} has no record for group `{group}`")
}

/// Ask every instance; the state at least `quorum` of them report identically, if any.
pub async fn quorum(
    servers: &[SocketAddr],
    group: &str,
    zone: &str,
    quorum: usize,
    timeout: Duration,
) -> Option<Seen> {
    let answers =
        futures_util::future::join_all(servers.iter().map(|s| ask(*s, group, zone, timeout))).await;
    let mut counts: std::collections::HashMap<Seen, usize> = std::collections::HashMap::new();
    for a in answers.into_iter().flatten() {
        *counts.entry(a).or_default() += 1;
    }
    counts
        .into_iter()
        .find(|(_, n)| *n >= quorum)
        .map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_witness_txt() {
        let s = super::parse("active=b epoch=42 holder=ctrl-b").unwrap();
        assert_eq!(
            (s.active.as_str(), s.epoch, s.holder.as_str()),
            ("b", 42, "ctrl-b")
        );
        assert!(super::parse("active=b").is_none());
        // As `dig +short` prints a TXT record.
        let q = super::parse("\"active=b epoch=42 holder=ctrl-b\"\n").unwrap();
        assert_eq!((q.active, q.epoch, q.holder), (s.active, s.epoch, s.holder));
    }
}
