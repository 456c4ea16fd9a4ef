//! Conntrack garbage collection: removes entries whose idle lifetime ran out (the datapath
//! treats them as over already; removing them frees their slots before the LRU has to evict
//! live connections) and reports how full the table is.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};

use catalyst_policy::datapath::{
    CtConn, CtKey, CtKey4, MAP_CONNTRACK, MAP_CONNTRACK_V4, ct_expired,
};

/// What one sweep found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries left (live connections).
    pub live: u64,
    /// Expired entries removed.
    pub removed: u64,
}

/// A handle on the pinned conntrack tables (IPv4 and IPv6), independent of the loaded
/// [`super::Datapath`], so the sweep runs on its own thread.
pub struct ConntrackGc {
    v4: HashMap<MapData, CtKey4, CtConn>,
    v6: HashMap<MapData, CtKey, CtConn>,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Opens the conntrack table `name` pinned under `pin_path/maps`.
fn open_table<K: aya::Pod>(
    pin_path: &Path,
    name: &str,
) -> anyhow::Result<HashMap<MapData, K, CtConn>> {
    let path = pin_path.join("maps").join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open the pinned conntrack map {}", path.display()))?;
    HashMap::try_from(Map::LruHashMap(data))
        .with_context(|| format!("{} is not a conntrack map", path.display()))
}

/// Removes the expired entries of one table; returns (live, removed).
fn sweep_table<K: aya::Pod>(map: &mut HashMap<MapData, K, CtConn>, now: u64) -> (u64, u64) {
    let mut expired = Vec::new();
    let mut live = 0u64;
    for item in &*map {
        // An entry evicted or removed during the walk ends the iteration step with an error for
        // that key only; skip it.
        let Ok((key, conn)) = item else { continue };
        // A side is in use by its endpoint until it expires; a connection with no side in use
        // is over for both.
        if conn
            .sides
            .iter()
            .all(|s| s.ifindex == 0 || ct_expired(s.expires, now))
        {
            expired.push(key);
        } else {
            live += 1;
        }
    }
    let mut removed = 0u64;
    for key in &expired {
        if map.remove(key).is_ok() {
            removed += 1;
        }
    }
    (live, removed)
}

impl ConntrackGc {
    /// Opens the conntrack tables pinned under `pin_path/maps`.
    pub fn open(pin_path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            v4: open_table(pin_path, MAP_CONNTRACK_V4)?,
            v6: open_table(pin_path, MAP_CONNTRACK)?,
        })
    }

    /// Removes every expired entry and counts the rest. An entry a packet renews between the
    /// read and the removal is removed too: its next packet starts a new connection, evaluated
    /// against the policy in force (as after any expiry).
    pub fn sweep(&mut self) -> anyhow::Result<GcReport> {
        let now = monotonic_ns();
        let (live4, removed4) = sweep_table(&mut self.v4, now);
        let (live6, removed6) = sweep_table(&mut self.v6, now);
        Ok(GcReport {
            live: live4 + live6,
            removed: removed4 + removed6,
        })
    }
}
