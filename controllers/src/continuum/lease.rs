//! The Continuum lease: one holder per Continuum in NATS KV `continuum-leases`, acquired and
//! renewed by compare-and-set on the entry revision.
//!
//! **Epoch.** The KV revision of the write that made a holder the holder is its epoch, the
//! fencing token carried into every side effect. Renewals are CAS writes too (so nobody can slip
//! in between) and carry the epoch in the body; the acquiring write cannot know its own revision,
//! so a body without `epoch` means "the revision of this entry".
//!
//! **Expiry without shared clocks.** A contender never compares timestamps written by another
//! host: it watches the entry and treats the lease as expired when the revision has not changed
//! for `ttl` on its own monotonic clock. The holder stops acting when its last successful renewal
//! *started* more than `ttl − margin` ago. Since the contender's wait starts after the holder's
//! write (which is after the renewal started), the holder always gives up before anyone else can
//! take over — also after a SIGSTOP, because the monotonic clock keeps running while stopped.
//! A released lease (`holder: null`) may be taken at once by a controller of the region it was
//! released to, by anyone else after `ttl`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The lease value (JSON `catalyst.lease/v1`, docs/schemas/catalyst.lease.v1.json).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Schema id, `catalyst.lease/v1`.
    pub schema: String,
    /// `namespace/name` of the Continuum.
    pub continuum: String,
    /// Controller instance holding the lease; `None` when released.
    pub holder: Option<String>,
    /// Region of the holder (or, when released, of the preferred next holder).
    pub region: String,
    /// The holder's epoch; absent in the acquiring write (then the entry revision is the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Lease lifetime the holder promises to honour, seconds.
    pub ttl_seconds: u32,
    /// Wall-clock time of the write (RFC 3339), informational only.
    pub written_at: String,
}

/// Schema id of [`LeaseRecord`].
pub const LEASE_SCHEMA: &str = "catalyst.lease/v1";

impl LeaseRecord {
    /// The epoch of this record stored at `revision`.
    pub fn epoch_at(&self, revision: u64) -> u64 {
        self.epoch.unwrap_or(revision)
    }
}

/// What a contender knows about the lease entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The record, or `None` when the key does not exist (or was deleted).
    pub record: Option<LeaseRecord>,
    /// Entry revision (0 when absent).
    pub revision: u64,
}

/// Tracks when the entry last changed, on the local monotonic clock.
#[derive(Clone, Debug, Default)]
pub struct ExpiryTracker {
    seen: Option<(u64, Instant)>,
}

impl ExpiryTracker {
    /// Record an observation; returns how long the revision has been unchanged.
    pub fn observe(&mut self, revision: u64, now: Instant) -> Duration {
        match self.seen {
            Some((r, since)) if r == revision => now.saturating_duration_since(since),
            _ => {
                self.seen = Some((revision, now));
                Duration::ZERO
            }
        }
    }
}

/// What a controller should do about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Create the key (nobody ever held it).
    Create,
    /// Take it over by CAS on `revision` (expired, or released to us).
    TakeOver {
        /// Revision to compare against.
        revision: u64,
    },
    /// Renew our own lease by CAS on `revision`.
    Renew {
        /// Revision to compare against.
        revision: u64,
        /// Our epoch.
        epoch: u64,
    },
    /// Someone else holds a live lease (or the release is not for us yet): wait.
    Wait,
}

/// Decide, from the observed entry and how long it has been unchanged.
pub fn decide(me: &str, my_region: &str, obs: &Observed, unchanged: Duration) -> LeaseAction {
    let Some(rec) = &obs.record else {
        return if obs.revision == 0 {
            LeaseAction::Create
        } else {
            // Deleted: treat like a release to nobody — wait out the TTL of whoever held it.
            LeaseAction::TakeOver {
                revision: obs.revision,
            }
        };
    };
    let ttl = Duration::from_secs(u64::from(rec.ttl_seconds));
    match &rec.holder {
        Some(h) if h == me => LeaseAction::Renew {
            revision: obs.revision,
            epoch: rec.epoch_at(obs.revision),
        },
        None if rec.region == my_region => LeaseAction::TakeOver {
            revision: obs.revision,
        },
        _ if unchanged >= ttl => LeaseAction::TakeOver {
            revision: obs.revision,
        },
        _ => LeaseAction::Wait,
    }
}

/// The holder's own view of its lease: until when it may act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Epoch (fencing token).
    pub epoch: u64,
    /// Revision of our last write (CAS base of the next renewal).
    pub revision: u64,
    /// Acting is allowed strictly before this instant.
    pub valid_until: Instant,
}

impl Held {
    /// A lease whose successful write was *started* at `started`.
    pub fn new(
        epoch: u64,
        revision: u64,
        started: Instant,
        ttl: Duration,
        margin: Duration,
    ) -> Self {
        Self {
            epoch,
            revision,
            valid_until: started + ttl.saturating_sub(margin),
        }
    }

    /// Whether side effects may still be performed under this lease.
    pub fn valid(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: Option<&str>, region: &str, epoch: Option<u64>) -> LeaseRecord {
        LeaseRecord {
            schema: LEASE_SCHEMA.into(),
            continuum: "db/orders".into(),
            holder: holder.map(Into::into),
            region: region.into(),
            epoch,
            ttl_seconds: 30,
            written_at: String::new(),
        }
    }

    #[test]
    fn decisions() {
        let none = Observed {
            record: None,
            revision: 0,
        };
        assert_eq!(
            decide("a", "eu", &none, Duration::ZERO),
            LeaseAction::Create
        );
        let mine = Observed {
            record: Some(rec(Some("a"), "eu", Some(4))),
            revision: 9,
        };
        assert_eq!(
            decide("a", "eu", &mine, Duration::ZERO),
            LeaseAction::Renew {
                revision: 9,
                epoch: 4
            }
        );
        let fresh = Observed {
            record: Some(rec(Some("a"), "eu", None)),
            revision: 12,
        };
        assert_eq!(
            decide("a", "eu", &fresh, Duration::ZERO),
            LeaseAction::Renew {
                revision: 12,
                epoch: 12
            }
        );
        assert_eq!(
            decide("b", "us", &fresh, Duration::from_secs(29)),
            LeaseAction::Wait
        );
        assert_eq!(
            decide("b", "us", &fresh, Duration::from_secs(30)),
            LeaseAction::TakeOver { revision: 12 }
        );
        let released = Observed {
            record: Some(rec(None, "us", Some(12))),
            revision: 13,
        };
        assert_eq!(
            decide("b", "us", &released, Duration::ZERO),
            LeaseAction::TakeOver { revision: 13 }
        );
        assert_eq!(
            decide("c", "ap", &released, Duration::ZERO),
            LeaseAction::Wait
        );
    }

    #[test]
    fn expiry_tracks_revision_changes_on_the_local_clock() {
        let mut t = ExpiryTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.observe(5, t0), Duration::ZERO);
        assert_eq!(
            t.observe(5, t0 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(t.observe(6, t0 + Duration::from_secs(4)), Duration::ZERO);
        assert_eq!(
            t.observe(6, t0 + Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn holder_gives_up_before_a_contender_can_take_over() {
        // The holder's renewal starts at s, is written at w ≥ s, and the contender first sees
        // it at o ≥ w; the contender may take over at o + ttl; the holder stops at s + ttl − m.
        let ttl = Duration::from_secs(30);
        let margin = Duration::from_secs(2);
        let s = Instant::now();
        let held = Held::new(7, 8, s, ttl, margin);
        let observed_at = s + Duration::from_millis(5);
        let takeover = observed_at + ttl;
        assert!(!held.valid(takeover));
        let last_valid = (s + ttl)
            .checked_sub(margin + Duration::from_millis(1))
            .unwrap();
        assert!(held.valid(last_valid));
    }
}
