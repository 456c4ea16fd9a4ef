//! Loads the eBPF object, pins its maps, attaches the programs to workload interfaces (TCX with
//! pinned links, so enforcement survives the agent; legacy clsact on kernels without TCX), and
//! exposes the maps as a [`MapStore`].

use std::{
    collections::BTreeSet,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use ipnet::{Ipv4Net, Ipv6Net};

use catalyst_policy::datapath::{
    ALL_MAPS, COUNTER_SLOTS, CtConn, CtKey, CtKey4, DATAPATH_SCHEMA, DatapathConfig, EndpointInfo,
    FragKey, FragPorts, IpcacheEntry, MAP_CONFIG, MAP_CONNTRACK, MAP_CONNTRACK_V4, MAP_COUNTERS,
    MAP_ENDPOINTS, MAP_EVENTS, MAP_FRAGMENTS, MAP_IPCACHE_HOST_V4, MAP_IPCACHE_HOST_V6,
    MAP_IPCACHE_V4, MAP_IPCACHE_V6, MAP_POLICY, MAP_POLICY_EXACT, POLICY_PREFIX_FULL_BITS,
    PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PolicyEntry, PolicyKey,
};

use super::{
    migrate,
    store::{MapStore, StoreError},
    tcx,
};
use crate::config::MapSizes;

/// tc filter priority of our programs (first: lower runs earlier).
const TC_PRIORITY: u16 = 1;
/// tc filter handle of our programs.
const TC_HANDLE: TcHandle = TcHandle::new(0, 0xca7);

/// The two hooks: program, hook name (for pins), attach type.
const HOOKS: [(&str, &str, TcAttachType); 2] = [
    (PROG_FROM_ENDPOINT, "ingress", TcAttachType::Ingress),
    (PROG_TO_ENDPOINT, "egress", TcAttachType::Egress),
];

/// How programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX with pinned links when possible, else tc clsact.
    Auto,
    /// TCX links only (kernel 6.6+, link pinning allowed).
    Tcx,
    /// Legacy tc clsact filters.
    Tc,
}

enum TcxError {
    PinRefused(anyhow::Error),
    Other(anyhow::Error),
}

/// The eBPF object built by `agent/build.rs`.
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/catalyst-agent-ebpf"));

/// How to load the datapath.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// bpffs directory; maps go to `<pin_path>/maps`, links to `<pin_path>/links`.
    pub pin_path: PathBuf,
    /// Map capacities.
    pub sizes: MapSizes,
    /// Attachment mode.
    pub attach_mode: AttachMode,
}

/// The loaded datapath: programs, typed maps, attachments.
pub struct Datapath {
    ebpf: Ebpf,
    pin_path: PathBuf,
    mode: AttachMode,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    ipcache4: LpmTrie<MapData, [u8; 4], IpcacheEntry>,
    ipcache6: LpmTrie<MapData, [u8; 16], IpcacheEntry>,
    /// /32 entries (key: the address as the packet carries it, read as a native `u32`).
    iphost4: HashMap<MapData, u32, IpcacheEntry>,
    /// /128 entries (key: the address's four words as the packet carries them).
    iphost6: HashMap<MapData, [u32; 4], IpcacheEntry>,
    policy: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    /// Entries of [`POLICY_PREFIX_FULL_BITS`].
    policy_exact: HashMap<MapData, PolicyKey, PolicyEntry>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    conntrack: Conntrack,
    events: Option<RingBuf<MapData>>,
    /// Interfaces attached by this process or adopted from pins.
    attached: BTreeSet<String>,
    /// TCX links cannot be pinned here: programs are attached to the TCX hooks without links.
    tcx_without_links: bool,
    /// Pinned maps found with an incompatible layout and recreated empty at load.
    recreated: Vec<&'static str>,
    /// Conntrack entries carried over from an older layout at load.
    migrated: usize,
}

/// The conntrack tables: IPv4 connections under [`CtKey4`], IPv6 ones under [`CtKey`].
struct Conntrack {
    v4: HashMap<MapData, CtKey4, CtConn>,
    v6: HashMap<MapData, CtKey, CtConn>,
}

impl Conntrack {
    /// Inserts `entry` under `key` (a canonical key) into the table of its family.
    fn insert(&mut self, key: &CtKey, entry: &CtConn) -> Result<(), StoreError> {
        if key.family == 4 {
            self.v4
                .insert(CtKey4::of(key), entry, 0)
                .map_err(|e| err(MAP_CONNTRACK_V4, "insert", e))
        } else {
            self.v6
                .insert(key, entry, 0)
                .map_err(|e| err(MAP_CONNTRACK, "insert", e))
        }
    }
}

/// Writes the converted conntrack entries of an older layout into the new tables; returns how
/// many they took (a full table evicts the least recently used, as for any insert).
fn migrate_conntrack(map: &mut Conntrack, entries: &[(CtKey, CtConn)], from_schema: u32) -> usize {
    if entries.is_empty() {
        return 0;
    }
    let mut written = 0;
    let mut failed = 0;
    for (k, v) in entries {
        if map.insert(k, v).is_ok() {
            written += 1;
        } else {
            failed += 1;
        }
    }
    tracing::info!(
        written,
        failed,
        from_schema,
        to_schema = DATAPATH_SCHEMA,
        "conntrack entries carried over from the older layout: their connections continue \
         (re-evaluated against the policy in force after the first sync)"
    );
    written
}

/// The layout a pinned map must have to be adopted: key and value size in bytes (LPM keys
/// include their 4-byte prefix length), and the capacity when it is fixed by the layout.
struct Layout {
    name: &'static str,
    key: u32,
    value: u32,
    max_entries: Option<u32>,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "map keys and values are a few dozen bytes"
)]
const fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Layouts of every map this build defines.
const LAYOUTS: [Layout; 13] = [
    Layout {
        name: MAP_ENDPOINTS,
        key: 4,
        value: size::<EndpointInfo>(),
        max_entries: None,
    },
    Layout {
        name: MAP_IPCACHE_V4,
        key: 4 + 4,
        value: size::<IpcacheEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_IPCACHE_V6,
        key: 4 + 16,
        value: size::<IpcacheEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_IPCACHE_HOST_V4,
        key: 4,
        value: size::<IpcacheEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_IPCACHE_HOST_V6,
        key: 16,
        value: size::<IpcacheEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_POLICY,
        key: 4 + size::<PolicyKey>(),
        value: size::<PolicyEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_POLICY_EXACT,
        key: size::<PolicyKey>(),
        value: size::<PolicyEntry>(),
        max_entries: None,
    },
    Layout {
        name: MAP_CONNTRACK_V4,
        key: size::<CtKey4>(),
        value: size::<CtConn>(),
        max_entries: None,
    },
    Layout {
        name: MAP_CONNTRACK,
        key: size::<CtKey>(),
        value: size::<CtConn>(),
        max_entries: None,
    },
    Layout {
        name: MAP_CONFIG,
        key: 4,
        value: size::<DatapathConfig>(),
        max_entries: Some(1),
    },
    Layout {
        name: MAP_COUNTERS,
        key: 4,
        value: 8,
        max_entries: Some(COUNTER_SLOTS),
    },
    Layout {
        name: MAP_EVENTS,
        key: 0,
        value: 0,
        max_entries: None,
    },
    Layout {
        name: MAP_FRAGMENTS,
        key: size::<FragKey>(),
        value: size::<FragPorts>(),
        max_entries: None,
    },
];

/// Checks the maps pinned under `maps_dir` against this build's layout and removes the pins of
/// incompatible ones, so the loader creates them afresh instead of handing the programs memory
/// of another shape. A pinned config written under another [`DATAPATH_SCHEMA`] (or of another
/// size) makes every pinned map incompatible: the meaning of their fields may have changed.
/// Returns the maps removed, and the conntrack entries of a schema-4 agent converted to this
/// layout ([`super::migrate`]; empty otherwise).
fn drop_incompatible_pins(maps_dir: &Path) -> anyhow::Result<Dropped> {
    const { assert!(LAYOUTS.len() == ALL_MAPS.len()) };
    let mut found = Vec::new();
    for layout in &LAYOUTS {
        let path = maps_dir.join(layout.name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("cannot read the pinned map {}", path.display()))?;
        let fits = info.key_size() == layout.key
            && info.value_size() == layout.value
            && layout.max_entries.is_none_or(|m| m == info.max_entries());
        let why = (!fits).then(|| {
            format!(
                "key {} value {} bytes, {} entries (expected key {} value {}{})",
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                layout.key,
                layout.value,
                layout
                    .max_entries
                    .map(|m| format!(", {m} entries"))
                    .unwrap_or_default()
            )
        });
        found.push((layout.name, path, why));
    }
    let mut old_schema = None;
    let schema_mismatch = match found.iter().find(|(n, _, _)| *n == MAP_CONFIG) {
        Some((_, _, Some(why))) => Some(format!("config map of another layout: {why}")),
        Some((_, path, None)) => {
            let map = MapData::from_pin(path)
                .with_context(|| format!("cannot open the pinned map {}", path.display()))?;
            let config: Array<MapData, DatapathConfig> =
                Array::try_from(aya::maps::Map::Array(map))?;
            let schema = config.get(&0, 0)?.schema;
            old_schema = Some(schema);
            // 0: created by a build of this schema that stopped before its first sync.
            (schema != 0 && schema != DATAPATH_SCHEMA).then(|| {
                format!("written under schema {schema}, this agent uses {DATAPATH_SCHEMA}")
            })
        }
        None => None,
    };
    let mut conntrack = Vec::new();
    let mut from_schema = 0;
    if let Some(schema) = old_schema.filter(|s| migrate::CONNTRACK_FROM_SCHEMAS.contains(s)) {
        // A failure to read costs the connections, not the start.
        match migrate::read_conntrack(maps_dir, schema) {
            Ok(entries) => {
                conntrack = entries;
                from_schema = schema;
            }
            Err(e) => tracing::warn!(
                pins = %maps_dir.display(),
                error = %format!("{e:#}"),
                "cannot read the conntrack entries of schema {schema}; tracked connections are \
                 re-evaluated as new ones"
            ),
        }
    }
    let mut removed = Vec::new();
    for (name, path, why) in found {
        let why = match (&schema_mismatch, why) {
            (Some(schema), _) => schema.clone(),
            (None, Some(why)) => why,
            (None, None) => continue,
        };
        tracing::warn!(
            map = name,
            pin = %path.display(),
            reason = %why,
            "pinned map has an incompatible layout; recreating it empty (its entries are lost, \
             the agent re-populates policy state; tracked connections are re-evaluated)"
        );
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the incompatible pin {}", path.display()))?;
        removed.push(name);
    }
    Ok(Dropped {
        removed,
        conntrack,
        from_schema,
    })
}

/// What [`drop_incompatible_pins`] removed and carried over.
struct Dropped {
    removed: Vec<&'static str>,
    /// Connections carried over, converted to this schema's layout.
    conntrack: Vec<(CtKey, CtConn)>,
    /// The schema they were read from.
    from_schema: u32,
}

fn err(map: &'static str, op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        map,
        op,
        message: e.to_string(),
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("eBPF object has no map `{name}`"))?;
    T::try_from(map).with_context(|| format!("map `{name}` has an unexpected type or layout"))
}

impl Datapath {
    /// Loads the programs and maps. Maps already pinned under `pin_path` are adopted (their
    /// contents are kept), so a restarted agent continues where the previous one stopped.
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this catalyst-agent was built without its eBPF object (the eBPF toolchain was \
                 missing, or CATALYST_SKIP_EBPF was set); rebuild after `cargo xtask setup`"
            );
        }
        super::ensure_bpffs(&opts.pin_path)?;
        let maps_dir = opts.pin_path.join("maps");
        std::fs::create_dir_all(&maps_dir)
            .with_context(|| format!("cannot create {}", maps_dir.display()))?;
        std::fs::create_dir_all(opts.pin_path.join("links"))?;
        let Dropped {
            removed: recreated,
            conntrack: migrated,
            from_schema,
        } = drop_incompatible_pins(&maps_dir)?;
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(MAP_ENDPOINTS, opts.sizes.endpoints)
            .map_max_entries(MAP_IPCACHE_V4, opts.sizes.ipcache)
            .map_max_entries(MAP_IPCACHE_V6, opts.sizes.ipcache)
            .map_max_entries(MAP_IPCACHE_HOST_V4, opts.sizes.ipcache)
            .map_max_entries(MAP_IPCACHE_HOST_V6, opts.sizes.ipcache)
            .map_max_entries(MAP_POLICY, opts.sizes.policy)
            .map_max_entries(MAP_POLICY_EXACT, opts.sizes.policy)
            .map_max_entries(MAP_CONNTRACK_V4, opts.sizes.conntrack)
            .map_max_entries(MAP_CONNTRACK, opts.sizes.conntrack)
            .map_max_entries(MAP_EVENTS, opts.sizes.events_bytes)
            .map_max_entries(MAP_FRAGMENTS, opts.sizes.fragments);
        let mut ebpf = loader.load(OBJECT).with_context(|| {
            format!(
                "failed to load the eBPF object (maps pinned under {} with other sizes are \
                 adopted as they are; run `catalyst-agent uninstall` to start afresh)",
                maps_dir.display()
            )
        })?;
        for name in [PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("eBPF object has no program `{name}`"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the verifier rejected `{name}`"))?;
        }
        let endpoints = take(&mut ebpf, MAP_ENDPOINTS)?;
        let ipcache4 = take(&mut ebpf, MAP_IPCACHE_V4)?;
        let ipcache6 = take(&mut ebpf, MAP_IPCACHE_V6)?;
        let iphost4 = take(&mut ebpf, MAP_IPCACHE_HOST_V4)?;
        let iphost6 = take(&mut ebpf, MAP_IPCACHE_HOST_V6)?;
        let policy = take(&mut ebpf, MAP_POLICY)?;
        let policy_exact = take(&mut ebpf, MAP_POLICY_EXACT)?;
        let config = take(&mut ebpf, MAP_CONFIG)?;
        let counters: PerCpuArray<MapData, u64> = take(&mut ebpf, MAP_COUNTERS)?;
        let events = Some(take(&mut ebpf, MAP_EVENTS)?);
        let mut conntrack = Conntrack {
            v4: take(&mut ebpf, MAP_CONNTRACK_V4)?,
            v6: take(&mut ebpf, MAP_CONNTRACK)?,
        };
        let migrated = migrate_conntrack(&mut conntrack, &migrated, from_schema);
        Ok(Self {
            ebpf,
            pin_path: opts.pin_path.clone(),
            mode: if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
                opts.attach_mode
            } else {
                AttachMode::Tc
            },
            endpoints,
            ipcache4,
            ipcache6,
            iphost4,
            iphost6,
            policy,
            policy_exact,
            config,
            counters,
            conntrack,
            events,
            attached: BTreeSet::new(),
            tcx_without_links: false,
            recreated,
            migrated,
        })
    }

    /// Conntrack entries carried over from the pins of an older layout at load.
    pub fn migrated_connections(&self) -> usize {
        self.migrated
    }

    /// Pinned maps that had an incompatible layout at load and were recreated empty.
    pub fn recreated_maps(&self) -> &[&'static str] {
        &self.recreated
    }

    /// The attachment mode in use (`Auto` until the first attachment decided).
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Takes the event ring buffer (once) for the flow reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    fn link_pin(&self, iface: &str, hook: &str) -> PathBuf {
        self.pin_path.join("links").join(format!("{iface}.{hook}"))
    }

    /// Attaches both programs to `iface`.
    ///
    /// TCX: a link pinned by an earlier agent is updated in place (atomic program replacement,
    /// no gap); otherwise a new link is created and pinned. When the host refuses to pin links
    /// (some sandboxes return EPERM for `BPF_OBJ_PIN` on links) or the kernel has no TCX, the
    /// programs go into tc clsact filters at a fixed priority and handle instead: those outlive
    /// the agent on their own, and a restarted agent swaps its program into the same filter.
    pub fn attach(&mut self, iface: &str) -> anyhow::Result<()> {
        if (self.mode == AttachMode::Tcx || self.mode == AttachMode::Auto)
            && !self.tcx_without_links
        {
            match self.attach_tcx(iface) {
                Ok(()) => {
                    self.mode = AttachMode::Tcx;
                    self.attached.insert(iface.to_owned());
                    return Ok(());
                }
                Err(TcxError::PinRefused(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "TCX links cannot be pinned on this host; attaching the programs to the \
                         TCX hooks without links, which also survive agent restarts"
                    );
                    self.tcx_without_links = true;
                }
                Err(TcxError::Other(e)) => return Err(e),
            }
        }
        if self.tcx_without_links {
            match self.attach_tcx_prog(iface) {
                Ok(()) => {
                    self.mode = AttachMode::Tcx;
                    self.attached.insert(iface.to_owned());
                    return Ok(());
                }
                Err(e) if self.mode == AttachMode::Auto => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "TCX refused the programs; using tc clsact filters, which also survive \
                         agent restarts"
                    );
                    self.tcx_without_links = false;
                    self.mode = AttachMode::Tc;
                }
                Err(e) => return Err(e),
            }
        }
        self.attach_tc(iface)?;
        self.attached.insert(iface.to_owned());
        Ok(())
    }

    /// TCX without links ([`super::tcx`]): our program replaces the one a previous agent left
    /// at each hook (atomically), or goes in front of the others; tc filters of ours on the
    /// interface (a previous agent's fallback) are removed once TCX enforces.
    fn attach_tcx_prog(&mut self, iface: &str) -> anyhow::Result<()> {
        let ifindex = ifindex(iface)?;
        for (prog_name, hook, attach_type) in HOOKS {
            let tcx_type = tcx_type(attach_type);
            let prog: &SchedClassifier = self
                .ebpf
                .program(prog_name)
                .expect("checked at load")
                .try_into()?;
            let fd = prog.fd()?;
            let id = prog.info()?.id();
            let found = tcx::ours(ifindex, tcx_type, prog_name)
                .with_context(|| format!("cannot query the TCX {hook} hook of `{iface}`"))?;
            if !found.iter().any(|(old, _)| *old == id) {
                let replace = found.first().map(|(_, old)| old.as_fd());
                tcx::attach(ifindex, tcx_type, fd.as_fd(), replace).with_context(|| {
                    format!("failed to attach `{prog_name}` to `{iface}` ({hook}, TCX)")
                })?;
            }
            // Any further program of ours at the hook (several agents' leftovers).
            for (old, old_fd) in found.iter().skip(1) {
                if *old != id {
                    let _ = tcx::detach(ifindex, tcx_type, old_fd.as_fd());
                }
            }
        }
        detach_tc(iface);
        Ok(())
    }

    fn attach_tcx(&mut self, iface: &str) -> Result<(), TcxError> {
        for (prog_name, hook, attach_type) in HOOKS {
            let pin = self.link_pin(iface, hook);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .expect("checked at load")
                .try_into()
                .map_err(|e: aya::programs::ProgramError| TcxError::Other(e.into()))?;
            let fresh = |prog: &mut SchedClassifier| {
                prog.attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .with_context(|| format!("failed to attach `{prog_name}` to `{iface}` ({hook})"))
            };
            let link_id = match PinnedLink::from_pin(&pin) {
                Ok(old) => {
                    let fd: FdLink = old.into();
                    let replaced = SchedClassifierLink::try_from(fd)
                        .map_err(anyhow::Error::from)
                        .and_then(|l| prog.attach_to_link(l).map_err(anyhow::Error::from));
                    let _ = std::fs::remove_file(&pin);
                    match replaced {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::warn!(error = %e, iface, hook, "pinned link unusable, attaching afresh");
                            fresh(prog).map_err(TcxError::Other)?
                        }
                    }
                }
                Err(_) => fresh(prog).map_err(TcxError::Other)?,
            };
            let link = prog
                .take_link(link_id)
                .map_err(|e| TcxError::Other(e.into()))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| TcxError::Other(e.into()))?;
            match fd.pin(&pin) {
                // The pin keeps the link (and the attachment) alive after this process exits.
                Ok(pinned) => drop(pinned),
                Err(e) => {
                    return Err(TcxError::PinRefused(
                        anyhow::Error::from(e)
                            .context(format!("cannot pin link at {}", pin.display())),
                    ));
                }
            }
        }
        Ok(())
    }

    fn attach_tc(&mut self, iface: &str) -> anyhow::Result<()> {
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            tracing::debug!(error = %e, iface, "clsact qdisc (usually: already present)");
        }
        for (prog_name, hook, attach_type) in HOOKS {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .expect("checked at load")
                .try_into()?;
            // Replace our program in an existing filter (atomic), else create the filter.
            let existing =
                SchedClassifierLink::attached(iface, attach_type, TC_PRIORITY, TC_HANDLE, None)?;
            let id = match prog.attach_to_link(existing) {
                Ok(id) => id,
                Err(_) => prog
                    .attach_with_options(
                        iface,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIORITY,
                            handle: TC_HANDLE,
                            classid: None,
                        }),
                    )
                    .with_context(|| {
                        format!("failed to attach `{prog_name}` to `{iface}` ({hook}, tc)")
                    })?,
            };
            // tc filters outlive the process on their own; forget the handle so dropping it does
            // not detach the program.
            let link = prog.take_link(id)?;
            std::mem::forget(link);
        }
        Ok(())
    }

    /// Detaches programs from interfaces that are pinned but no longer wanted.
    pub fn detach_others(&mut self, wanted: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        let dir = self.pin_path.join("links");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(removed);
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((iface, _hook)) = name.rsplit_once('.') else {
                continue;
            };
            if wanted.contains(iface) {
                continue;
            }
            if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                // Unpinning and dropping the last fd detaches the program.
                drop(link.unpin());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
            self.attached.remove(iface);
            removed.push(name);
        }
        if self.mode == AttachMode::Tc || self.tcx_without_links {
            for iface in self.attached.clone() {
                if !wanted.contains(&iface) {
                    let how = if self.mode == AttachMode::Tc {
                        detach_tc(&iface);
                        "tc"
                    } else {
                        detach_tcx_prog(&iface);
                        "TCX"
                    };
                    self.attached.remove(&iface);
                    removed.push(format!("{iface} ({how})"));
                }
            }
        }
        Ok(removed)
    }

    /// Runs program `prog` (`PROG_FROM_ENDPOINT` or `PROG_TO_ENDPOINT`) on `packet` with
    /// `BPF_PROG_TEST_RUN`, `repeat` times; returns the program's return value and the kernel's
    /// average duration per run. The skb's device is the loopback interface (ifindex 1).
    pub fn test_run(
        &self,
        prog: &str,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(i32, std::time::Duration)> {
        self.test_run_on(prog, packet, repeat, 1)
    }

    /// [`Self::test_run`] on an skb of interface `ifindex` (an existing device of this network
    /// namespace; 1 is the loopback device).
    pub fn test_run_on(
        &self,
        prog: &str,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> anyhow::Result<(i32, std::time::Duration)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        // The `struct __sk_buff` context up to its `ifindex` field (offset 40); the kernel takes
        // the skb's device from it and requires the fields before it that it does not accept
        // as input to be zero.
        let mut skb_ctx = [0u8; 44];
        skb_ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let p: &SchedClassifier = self
            .ebpf
            .program(prog)
            .with_context(|| format!("no program `{prog}`"))?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: (ifindex > 1).then_some(&skb_ctx[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of `{prog}` failed"))?;
        #[expect(
            clippy::cast_possible_wrap,
            reason = "TC verdicts are small signed ints"
        )]
        Ok((r.return_value as i32, r.duration))
    }

    /// Inserts a conntrack entry (benchmarks prefill the table; the datapath owns it otherwise).
    /// `key` must be canonical ([`CtKey::canonical`]); it goes to the table of its family.
    pub fn conntrack_insert(&mut self, key: CtKey, entry: CtConn) -> Result<(), StoreError> {
        self.conntrack.insert(&key, &entry)
    }

    /// The connection under `key` (a canonical key), if the table has it.
    pub fn conntrack_get(&self, key: &CtKey) -> Option<CtConn> {
        if key.family == 4 {
            self.conntrack.v4.get(&CtKey4::of(key), 0).ok()
        } else {
            self.conntrack.v6.get(key, 0).ok()
        }
    }

    /// Sum over CPUs of every counter slot.
    pub fn counters(&self) -> anyhow::Result<Vec<u64>> {
        read_counters_of(&self.counters)
    }

    /// Whether this process attached (or adopted) `iface`.
    pub fn is_attached(&self, iface: &str) -> bool {
        self.attached.contains(iface)
    }
}

/// Sums the per-CPU values of every slot.
pub fn read_counters_of(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(COUNTER_SLOTS as usize);
    for i in 0..map.len() {
        let v = map.get(&i, 0)?;
        out.push(v.iter().sum());
    }
    Ok(out)
}

/// Detaches our tc filters from `iface` (both hooks); missing ones are ignored.
fn detach_tc(iface: &str) -> usize {
    let mut n = 0;
    for (prog_name, _, attach_type) in HOOKS {
        if tc::qdisc_detach_program(iface, attach_type, prog_name).is_ok() {
            n += 1;
        }
    }
    n
}

/// Detaches our programs attached to the TCX hooks of `iface` without links; returns how many.
fn detach_tcx_prog(iface: &str) -> usize {
    let Ok(ifindex) = ifindex(iface) else {
        return 0;
    };
    let mut n = 0;
    for (prog_name, _, attach_type) in HOOKS {
        let tcx_type = tcx_type(attach_type);
        for (_, fd) in tcx::ours(ifindex, tcx_type, prog_name).unwrap_or_default() {
            if tcx::detach(ifindex, tcx_type, fd.as_fd()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// The ifindex of `iface` in the current network namespace.
fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .with_context(|| format!("interface name `{iface}` contains a NUL byte"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => {
            Err(std::io::Error::last_os_error()).with_context(|| format!("no interface `{iface}`"))
        }
        i => Ok(i),
    }
}

/// The TCX attach type of a hook.
fn tcx_type(attach_type: TcAttachType) -> u32 {
    if attach_type == TcAttachType::Ingress {
        tcx::TCX_INGRESS
    } else {
        tcx::TCX_EGRESS
    }
}

/// Names of every interface in the current network namespace.
fn interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            out.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// Removes everything the agent installed: pinned links (detaching the programs), tc filters and
/// TCX attachments without links on the interfaces of the current network namespace, and the
/// pinned maps.
pub fn uninstall(pin_path: &Path) -> anyhow::Result<usize> {
    let mut removed = 0;
    for iface in interfaces() {
        removed += detach_tc(&iface) + detach_tcx_prog(&iface);
    }
    let links = pin_path.join("links");
    if let Ok(rd) = std::fs::read_dir(&links) {
        for entry in rd.flatten() {
            if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                drop(link.unpin());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
            removed += 1;
        }
    }
    let maps = pin_path.join("maps");
    if let Ok(rd) = std::fs::read_dir(&maps) {
        for entry in rd.flatten() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed += 1;
        }
    }
    for dir in [&links, &maps, &pin_path.to_path_buf()] {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(removed)
}

fn v4_key(net: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}
fn v6_key(net: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}
/// The single-address key of a /32: the address's bytes as one native word, as the program
/// reads it from the packet.
fn host4_key(net: Ipv4Net) -> u32 {
    u32::from_ne_bytes(net.addr().octets())
}
/// The single-address key of a /128: the address's four words, as the program reads them.
fn host6_key(net: Ipv6Net) -> [u32; 4] {
    let o = net.addr().octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}
fn host6_net(words: [u32; 4]) -> Ipv6Net {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Net::new(o.into(), 128).expect("/128 is a valid prefix length")
}

impl MapStore for Datapath {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>, StoreError> {
        self.endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| err(MAP_ENDPOINTS, "iterate", e))
    }
    fn put_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), StoreError> {
        self.endpoints
            .insert(ifindex, info, 0)
            .map_err(|e| err(MAP_ENDPOINTS, "insert", e))
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), StoreError> {
        self.endpoints
            .remove(&ifindex)
            .map_err(|e| err(MAP_ENDPOINTS, "remove", e))
    }
    fn ipcache_v4(&self) -> Result<Vec<(Ipv4Net, IpcacheEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in &self.ipcache4 {
            let (k, v) = item.map_err(|e| err(MAP_IPCACHE_V4, "iterate", e))?;
            let net = Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| err(MAP_IPCACHE_V4, "decode", e))?;
            out.push((net, v));
        }
        for item in &self.iphost4 {
            let (k, v) = item.map_err(|e| err(MAP_IPCACHE_HOST_V4, "iterate", e))?;
            out.push((Ipv4Net::from(std::net::Ipv4Addr::from(k.to_ne_bytes())), v));
        }
        Ok(out)
    }
    fn put_ipcache_v4(&mut self, net: Ipv4Net, e: IpcacheEntry) -> Result<(), StoreError> {
        if net.prefix_len() == 32 {
            return self
                .iphost4
                .insert(host4_key(net), e, 0)
                .map_err(|er| err(MAP_IPCACHE_HOST_V4, "insert", er));
        }
        self.ipcache4
            .insert(&v4_key(net), e, 0)
            .map_err(|er| err(MAP_IPCACHE_V4, "insert", er))
    }
    fn del_ipcache_v4(&mut self, net: Ipv4Net) -> Result<(), StoreError> {
        if net.prefix_len() == 32 {
            return self
                .iphost4
                .remove(&host4_key(net))
                .map_err(|e| err(MAP_IPCACHE_HOST_V4, "remove", e));
        }
        self.ipcache4
            .remove(&v4_key(net))
            .map_err(|e| err(MAP_IPCACHE_V4, "remove", e))
    }
    fn ipcache_v6(&self) -> Result<Vec<(Ipv6Net, IpcacheEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in &self.ipcache6 {
            let (k, v) = item.map_err(|e| err(MAP_IPCACHE_V6, "iterate", e))?;
            let net = Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(|e| err(MAP_IPCACHE_V6, "decode", e))?;
            out.push((net, v));
        }
        for item in &self.iphost6 {
            let (k, v) = item.map_err(|e| err(MAP_IPCACHE_HOST_V6, "iterate", e))?;
            out.push((host6_net(k), v));
        }
        Ok(out)
    }
    fn put_ipcache_v6(&mut self, net: Ipv6Net, e: IpcacheEntry) -> Result<(), StoreError> {
        if net.prefix_len() == 128 {
            return self
                .iphost6
                .insert(host6_key(net), e, 0)
                .map_err(|er| err(MAP_IPCACHE_HOST_V6, "insert", er));
        }
        self.ipcache6
            .insert(&v6_key(net), e, 0)
            .map_err(|er| err(MAP_IPCACHE_V6, "insert", er))
    }
    fn del_ipcache_v6(&mut self, net: Ipv6Net) -> Result<(), StoreError> {
        if net.prefix_len() == 128 {
            return self
                .iphost6
                .remove(&host6_key(net))
                .map_err(|e| err(MAP_IPCACHE_HOST_V6, "remove", e));
        }
        self.ipcache6
            .remove(&v6_key(net))
            .map_err(|e| err(MAP_IPCACHE_V6, "remove", e))
    }
    fn policy(&self) -> Result<Vec<(u32, PolicyKey, PolicyEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in &self.policy {
            let (k, v) = item.map_err(|e| err(MAP_POLICY, "iterate", e))?;
            out.push((k.prefix_len(), k.data(), v));
        }
        for item in &self.policy_exact {
            let (k, v) = item.map_err(|e| err(MAP_POLICY_EXACT, "iterate", e))?;
            out.push((POLICY_PREFIX_FULL_BITS, k, v));
        }
        Ok(out)
    }
    fn put_policy(&mut self, len: u32, key: PolicyKey, e: PolicyEntry) -> Result<(), StoreError> {
        if len == POLICY_PREFIX_FULL_BITS {
            return self
                .policy_exact
                .insert(key, e, 0)
                .map_err(|er| err(MAP_POLICY_EXACT, "insert", er));
        }
        self.policy
            .insert(&Key::new(len, key), e, 0)
            .map_err(|er| err(MAP_POLICY, "insert", er))
    }
    fn del_policy(&mut self, len: u32, key: PolicyKey) -> Result<(), StoreError> {
        if len == POLICY_PREFIX_FULL_BITS {
            return self
                .policy_exact
                .remove(&key)
                .map_err(|e| err(MAP_POLICY_EXACT, "remove", e));
        }
        self.policy
            .remove(&Key::new(len, key))
            .map_err(|e| err(MAP_POLICY, "remove", e))
    }
    fn config(&self) -> Result<DatapathConfig, StoreError> {
        self.config
            .get(&0, 0)
            .map_err(|e| err(MAP_CONFIG, "lookup", e))
    }
    fn set_config(&mut self, cfg: DatapathConfig) -> Result<(), StoreError> {
        self.config
            .set(0, cfg, 0)
            .map_err(|e| err(MAP_CONFIG, "update", e))
    }
}
