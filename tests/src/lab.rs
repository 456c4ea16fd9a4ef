//! The netns lab: a "node" namespace, several "pod" namespaces joined to it by veth pairs
//! (Calico-style /32 routes with proxy ARP), and a "world" namespace standing in for the
//! internet. Every address lives inside these namespaces; nothing leaves the machine.
//!
//! ```text
//!   cat<run>-pod-client  eth0 10.244.0.10 ─┐
//!   cat<run>-pod-web     eth0 10.244.0.11 ─┤ veth   cat<run>-node (host 10.244.255.1)
//!   cat<run>-pod-db      eth0 10.244.0.12 ─┤ ─────  routes 10.244.0.x/32 → host-side veth
//!   cat<run>-pod-other   eth0 10.244.0.13 ─┤
//!   cat<run>-world       eth0 198.51.100.10, .20 ─┘
//! ```
//!
//! Namespace names (and the bpffs pin paths of [`pin_path`]) carry a per-run id, so two suites
//! on one machine never touch each other's lab: `<run>` is the test process's PID, or what
//! [`set_run_id`] chose (`cargo xtask lab|demo|bench` use an empty id: `cat-node`, …). Interface
//! names live inside the lab's own namespaces and need no id. A lab left behind by a run that
//! died is removed by the next [`up`].

use std::{os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, bail};

static RUN_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets this process's run id (before any lab name is used); fails if one was already fixed.
pub fn set_run_id(id: &str) -> anyhow::Result<()> {
    RUN_ID
        .set(id.to_owned())
        .map_err(|old| anyhow::anyhow!("lab run id already set to `{old}`"))
}

/// This process's run id: set by [`set_run_id`], else the PID.
pub fn run_id() -> &'static str {
    RUN_ID.get_or_init(|| std::process::id().to_string())
}

/// Name of the node namespace.
pub fn node_ns() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("cat{}-node", run_id()))
}

/// Name of the world namespace.
pub fn world_ns() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("cat{}-world", run_id()))
}

/// A bpffs pin directory for an agent of this run: `/sys/fs/bpf/catalyst<run>-<name>`.
pub fn pin_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/fs/bpf/catalyst{}-{name}", run_id()))
}
/// Host-side interface of the world namespace.
pub const WORLD_IFACE: &str = "cat-world";
/// The node's own address (the `host` identity).
pub const HOST_ADDR: &str = "10.244.255.1";
/// World addresses: the first is reachable by policy, the second is in the `except` list.
pub const WORLD_ADDRS: [&str; 2] = ["198.51.100.10", "198.51.100.20"];
/// Gateway address pods route through (proxy ARP on the host side).
const GATEWAY_V4: &str = "169.254.1.1";

/// One pod of the lab.
#[derive(Debug, Clone, Copy)]
pub struct Pod {
    /// Pod name.
    pub name: &'static str,
    /// Kubernetes namespace the pod pretends to be in.
    pub namespace: &'static str,
    /// `app` label.
    pub app: &'static str,
    /// IPv4 address.
    pub ipv4: &'static str,
    /// IPv6 address.
    pub ipv6: &'static str,
}

impl Pod {
    /// Network namespace name.
    pub fn netns(&self) -> String {
        format!("cat{}-pod-{}", run_id(), self.name)
    }
    /// Host-side interface (in the node namespace).
    pub fn host_iface(&self) -> String {
        format!("cat-{}", self.name)
    }
}

/// The lab's pods.
pub const PODS: [Pod; 4] = [
    Pod {
        name: "client",
        namespace: "shop",
        app: "client",
        ipv4: "10.244.0.10",
        ipv6: "fd00:244::10",
    },
    Pod {
        name: "web",
        namespace: "shop",
        app: "web",
        ipv4: "10.244.0.11",
        ipv6: "fd00:244::11",
    },
    Pod {
        name: "db",
        namespace: "shop",
        app: "db",
        ipv4: "10.244.0.12",
        ipv6: "fd00:244::12",
    },
    Pod {
        name: "other",
        namespace: "other",
        app: "client",
        ipv4: "10.244.0.13",
        ipv6: "fd00:244::13",
    },
];

/// Looks up a pod by name.
pub fn pod(name: &str) -> Pod {
    *PODS
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no lab pod `{name}`"))
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run `{}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut v = vec!["ip", "netns", "exec", netns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Path of the lock file that serialises lab users (tests, demo, benchmarks): the scenarios of
/// one process share its lab's names, and timing-sensitive suites and benchmarks should not
/// share two cores with another lab's traffic. Names are per run, so correctness across
/// processes does not depend on it.
pub const LOCK_PATH: &str = "/run/catalyst-lab.lock";

/// Exclusive use of the lab; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct LabLock {
    _file: std::fs::File,
}

/// Takes the lab for this caller, waiting while another process (or another scenario in this
/// process) holds it. Keep the returned guard alive until the lab is torn down.
pub fn lock() -> anyhow::Result<LabLock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("cannot open lab lock {LOCK_PATH}"))?;
    // SAFETY: a valid fd; flock has no memory effects.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("lab: waiting for another run to release {LOCK_PATH}");
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock({LOCK_PATH}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(LabLock { _file: file })
}

/// Whether the lab's node namespace exists.
pub fn is_up() -> bool {
    std::path::Path::new("/run/netns").join(node_ns()).exists()
}

/// The PID in a lab namespace name of a test run (`cat<pid>-…`), if it has one.
fn run_pid(netns: &str) -> Option<u32> {
    let rest = netns.strip_prefix("cat")?;
    let (digits, tail) = rest.split_once('-')?;
    (["node", "world"].contains(&tail) || tail.starts_with("pod-"))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Removes the namespaces of labs whose test process is gone (a run that was killed).
fn remove_stale_labs() -> anyhow::Result<()> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Ok(());
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = run_pid(&name)
            && pid != std::process::id()
            && !std::path::Path::new("/proc").join(pid.to_string()).exists()
        {
            sh(&["ip", "netns", "del", &name])?;
        }
    }
    Ok(())
}

/// Creates the lab (idempotent: an existing lab is torn down first).
#[expect(clippy::too_many_lines, reason = "the topology, built step by step")]
pub fn up() -> anyhow::Result<()> {
    remove_stale_labs()?;
    if is_up() {
        down()?;
    }
    let node_ns = node_ns();
    let world_ns = world_ns();
    sh(&["ip", "netns", "add", node_ns])?;
    ns(node_ns, &["ip", "link", "set", "lo", "up"])?;
    ns(
        node_ns,
        &["ip", "addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"],
    )?;
    // The pods' gateway is a local address of the node, so every host-side veth answers ARP
    // for it (Calico-style routing without addresses on the veths).
    ns(
        node_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_V4}/32"),
            "dev",
            "lo",
        ],
    )?;
    ns(node_ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns(
        node_ns,
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    )?;
    for p in PODS {
        let netns = p.netns();
        let host = p.host_iface();
        sh(&["ip", "netns", "add", &netns])?;
        sh(&[
            "ip", "link", "add", &host, "netns", node_ns, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ns(&netns, &["ip", "link", "set", "lo", "up"])?;
        ns(&netns, &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])?;
        ns(
            &netns,
            &["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"],
        )?;
        ns(
            &netns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", p.ipv4),
                "dev",
                "eth0",
            ],
        )?;
        ns(
            &netns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/128", p.ipv6),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ns(&netns, &["ip", "link", "set", "eth0", "up"])?;
        ns(
            &netns,
            &[
                "ip", "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link",
            ],
        )?;
        ns(
            &netns,
            &[
                "ip", "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0",
            ],
        )?;
        ns(
            &netns,
            &[
                "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ],
        )?;
        ns(
            node_ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{host}.accept_dad=0"),
            ],
        )?;
        ns(node_ns, &["ip", "link", "set", &host, "up"])?;
        ns(
            node_ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                &host,
                "nodad",
            ],
        )?;
        ns(
            node_ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{host}.proxy_arp=1"),
            ],
        )?;
        ns(
            node_ns,
            &[
                "ip",
                "route",
                "add",
                &format!("{}/32", p.ipv4),
                "dev",
                &host,
            ],
        )?;
        ns(
            node_ns,
            &[
                "ip",
                "-6",
                "route",
                "add",
                &format!("{}/128", p.ipv6),
                "dev",
                &host,
            ],
        )?;
    }
    sh(&["ip", "netns", "add", world_ns])?;
    sh(&[
        "ip",
        "link",
        "add",
        WORLD_IFACE,
        "netns",
        node_ns,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        world_ns,
    ])?;
    ns(world_ns, &["ip", "link", "set", "lo", "up"])?;
    for a in WORLD_ADDRS {
        ns(
            world_ns,
            &["ip", "addr", "add", &format!("{a}/32"), "dev", "eth0"],
        )?;
    }
    ns(world_ns, &["ip", "link", "set", "eth0", "up"])?;
    ns(
        world_ns,
        &[
            "ip", "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link",
        ],
    )?;
    ns(
        world_ns,
        &[
            "ip", "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0",
        ],
    )?;
    ns(node_ns, &["ip", "link", "set", WORLD_IFACE, "up"])?;
    ns(
        node_ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{WORLD_IFACE}.proxy_arp=1"),
        ],
    )?;
    for a in WORLD_ADDRS {
        ns(
            node_ns,
            &["ip", "route", "add", &format!("{a}/32"), "dev", WORLD_IFACE],
        )?;
    }
    Ok(())
}

/// Narrows the node's link towards the world to `mtu` bytes: packets the pods send towards
/// the world that are larger and carry DF are answered by the node with ICMP "fragmentation
/// needed", the path-MTU discovery case. The world's side keeps a 1,500-byte interface and
/// keeps advertising a 1,460-byte MSS (so the pods do send full-sized segments), but its route
/// back gets the same `mtu`, as a host behind a real smaller-MTU hop would have learnt: without
/// it the world's full-sized segments that leave without GSO are dropped by the node's narrowed
/// veth silently — a black hole in the other direction that depended on how the world's kernel
/// happened to batch its segments. The link goes with the lab.
pub fn set_world_link_mtu(mtu: u32) -> anyhow::Result<()> {
    let mtu = mtu.to_string();
    ns(
        node_ns(),
        &["ip", "link", "set", "dev", WORLD_IFACE, "mtu", &mtu],
    )?;
    ns(
        world_ns(),
        &[
            "ip", "route", "change", "default", "via", GATEWAY_V4, "dev", "eth0", "mtu", &mtu,
            "advmss", "1460",
        ],
    )
}

/// Removes every lab namespace (and with them the veth pairs). Missing ones are ignored.
pub fn down() -> anyhow::Result<()> {
    let mut names: Vec<String> = PODS.iter().map(Pod::netns).collect();
    names.push(world_ns().to_owned());
    names.push(node_ns().to_owned());
    for n in names {
        if std::path::Path::new("/run/netns").join(&n).exists() {
            sh(&["ip", "netns", "del", &n])?;
        }
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`; sockets it creates
/// live in that namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_run_id_and_stale_ones_are_recognised() {
        let id = run_id();
        assert_eq!(node_ns(), format!("cat{id}-node"));
        assert_eq!(world_ns(), format!("cat{id}-world"));
        assert_eq!(pod("web").netns(), format!("cat{id}-pod-web"));
        assert_eq!(
            pin_path("x"),
            std::path::PathBuf::from(format!("/sys/fs/bpf/catalyst{id}-x"))
        );
        assert_eq!(run_pid("cat123-node"), Some(123));
        assert_eq!(run_pid("cat123-pod-web"), Some(123));
        assert_eq!(run_pid("cat123-world"), Some(123));
        // The xtask lab (empty id) and anything else are never taken for a stale test run.
        assert_eq!(run_pid("cat-node"), None);
        assert_eq!(run_pid("cat123-other"), None);
        assert_eq!(run_pid("catx-node"), None);
    }
}
