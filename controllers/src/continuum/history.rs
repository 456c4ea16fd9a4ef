//! The epoch history (JSON lines) and its checker.
//!
//! Every lease grant, renewal, release and side effect is logged with its epoch by the
//! controller (`--history FILE`); the lab adds what each catalyst-dns instance served (its
//! `_continuum` witness TXT) and what the writer got acknowledged. The checker asserts the
//! safety properties Continuum promises:
//! - no holder acts (renews or performs a side effect) after a newer epoch was granted
//!   (`overlaps`: never two holders acting in overlapping epochs);
//! - no side effect carries an epoch older than the newest one granted before it (`stale`);
//! - no DNS instance ever serves an older epoch after a newer one (`dns_regressions`).

use std::{collections::BTreeMap, io::Write, path::Path};

use serde::{Deserialize, Serialize};

/// Kind of a history event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Lease acquired (epoch = the new epoch).
    Grant,
    /// Lease renewed.
    Renew,
    /// Lease released to another region.
    Release,
    /// A side effect performed (detail names it).
    Effect,
    /// A DNS instance served this epoch (lab observer).
    DnsServed,
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds (all processes of a lab share one clock).
    pub t_ms: u64,
    /// Who: controller identity, or DNS instance.
    pub node: String,
    /// What.
    pub kind: Kind,
    /// Epoch.
    pub epoch: u64,
    /// Details (step, region).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Appends events to a file (one JSON object per line, flushed per event).
#[derive(Debug)]
pub struct Log {
    file: Option<std::fs::File>,
    node: String,
}

impl Log {
    /// Log to `path` (appending) as `node`; `None` logs nothing.
    pub fn open(path: Option<&Path>, node: &str) -> std::io::Result<Self> {
        let file = path
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
            })
            .transpose()?;
        Ok(Self {
            file,
            node: node.to_string(),
        })
    }

    /// Record an event now.
    pub fn record(&mut self, kind: Kind, epoch: u64, detail: &str) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let ev = Event {
            t_ms: now_ms(),
            node: self.node.clone(),
            kind,
            epoch,
            detail: detail.to_string(),
        };
        if let Ok(mut line) = serde_json::to_vec(&ev) {
            line.push(b'\n');
            if let Err(e) = f.write_all(&line) {
                tracing::warn!(error = %e, "history event not written");
            }
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Actions by a holder after a newer epoch had been granted.
    pub overlaps: usize,
    /// Side effects with an epoch older than the newest granted before them.
    pub stale: usize,
    /// DNS answers that went back to an older epoch.
    pub dns_regressions: usize,
    /// Grants seen.
    pub grants: usize,
    /// First problems, for the report.
    pub examples: Vec<String>,
}

impl Verdict {
    /// No safety property violated.
    pub fn ok(&self) -> bool {
        self.overlaps == 0 && self.stale == 0 && self.dns_regressions == 0
    }
}

/// Check a history.
pub fn check(events: &[Event]) -> Verdict {
    let mut evs: Vec<&Event> = events.iter().collect();
    evs.sort_by_key(|e| e.t_ms);
    let mut v = Verdict::default();
    let mut newest_grant: u64 = 0;
    let mut dns_seen: BTreeMap<&str, u64> = BTreeMap::new();
    let note = |v: &mut Verdict, s: String| {
        if v.examples.len() < 10 {
            v.examples.push(s);
        }
    };
    // Events at the same millisecond: grants first would flag a same-ms renewal of the old
    // holder; order grants last within a millisecond (benefit of the doubt is not given to
    // later milliseconds).
    evs.sort_by_key(|e| (e.t_ms, e.kind == Kind::Grant));
    for e in evs {
        match e.kind {
            Kind::Grant => {
                v.grants += 1;
                if e.epoch <= newest_grant {
                    v.overlaps += 1;
                    note(
                        &mut v,
                        format!(
                            "{} granted epoch {} at {} after epoch {newest_grant}",
                            e.node, e.epoch, e.t_ms
                        ),
                    );
                }
                newest_grant = newest_grant.max(e.epoch);
            }
            Kind::Renew | Kind::Release | Kind::Effect => {
                if e.epoch < newest_grant {
                    if e.kind == Kind::Effect {
                        v.stale += 1;
                    }
                    v.overlaps += 1;
                    note(
                        &mut v,
                        format!(
                            "{} acted ({:?} {}) under epoch {} at {} after epoch {newest_grant} was granted",
                            e.node, e.kind, e.detail, e.epoch, e.t_ms
                        ),
                    );
                }
            }
            Kind::DnsServed => {
                let last = dns_seen.entry(e.node.as_str()).or_insert(0);
                if e.epoch < *last {
                    v.dns_regressions += 1;
                    note(
                        &mut v,
                        format!(
                            "{} served epoch {} at {} after {}",
                            e.node, e.epoch, e.t_ms, *last
                        ),
                    );
                }
                *last = (*last).max(e.epoch);
            }
        }
    }
    v
}

/// Read a history file (JSON lines); a bad line is an error naming its line number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read history `{}`: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow::anyhow!("{}:{}: bad history event: {e}", path.display(), i + 1)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, node: &str, kind: Kind, epoch: u64) -> Event {
        Event {
            t_ms: t,
            node: node.into(),
            kind,
            epoch,
            detail: String::new(),
        }
    }

    #[test]
    fn clean_history_passes() {
        let h = [
            ev(1, "a", Kind::Grant, 5),
            ev(2, "a", Kind::Effect, 5),
            ev(3, "a", Kind::Release, 5),
            ev(4, "b", Kind::Grant, 7),
            ev(5, "b", Kind::Effect, 7),
            ev(6, "dns-1", Kind::DnsServed, 5),
            ev(7, "dns-1", Kind::DnsServed, 7),
        ];
        let v = check(&h);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.grants, 2);
    }

    #[test]
    fn a_stale_holder_acting_is_caught() {
        let h = [
            ev(1, "a", Kind::Grant, 5),
            ev(40, "b", Kind::Grant, 9),
            ev(41, "a", Kind::Effect, 5),
            ev(42, "a", Kind::Renew, 5),
        ];
        let v = check(&h);
        assert_eq!((v.overlaps, v.stale), (2, 1));
        assert!(!v.ok());
    }

    #[test]
    fn dns_going_back_is_caught() {
        let h = [
            ev(1, "dns-2", Kind::DnsServed, 9),
            ev(2, "dns-2", Kind::DnsServed, 5),
            ev(3, "dns-1", Kind::DnsServed, 5),
        ];
        assert_eq!(check(&h).dns_regressions, 1);
    }
}
