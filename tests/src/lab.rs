//! The netns lab: a "node" namespace, several "pod" namespaces joined to it by veth pairs
//! (Calico-style /32 routes with proxy ARP), and a "world" namespace standing in for the
//! internet. Every address lives inside these namespaces; nothing leaves the machine.
//!
//! ```text
//!   cat-pod-client  eth0 10.244.0.10 ─┐
//!   cat-pod-web     eth0 10.244.0.11 ─┤ veth   cat-node (host 10.244.255.1)
//!   cat-pod-db      eth0 10.244.0.12 ─┤ ─────  routes 10.244.0.x/32 → host-side veth
//!   cat-pod-other   eth0 10.244.0.13 ─┤
//!   cat-world       eth0 198.51.100.10, .20 ─┘
//! ```

use std::{os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, bail};

/// Name of the node namespace.
pub const NODE_NS: &str = "cat-node";
/// Name of the world namespace.
pub const WORLD_NS: &str = "cat-world";
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
        format!("cat-pod-{}", self.name)
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

/// Path of the lock file that serialises lab users (tests, demo, benchmarks) across processes:
/// the lab's namespace names are fixed, so two runs at once would tear down each other's lab.
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
    std::path::Path::new("/run/netns").join(NODE_NS).exists()
}

/// Creates the lab (idempotent: an existing lab is torn down first).
#[expect(clippy::too_many_lines, reason = "the topology, built step by step")]
pub fn up() -> anyhow::Result<()> {
    if is_up() {
        down()?;
    }
    sh(&["ip", "netns", "add", NODE_NS])?;
    ns(NODE_NS, &["ip", "link", "set", "lo", "up"])?;
    ns(
        NODE_NS,
        &["ip", "addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"],
    )?;
    // The pods' gateway is a local address of the node, so every host-side veth answers ARP
    // for it (Calico-style routing without addresses on the veths).
    ns(
        NODE_NS,
        &[
            "ip",
            "addr",
            "add",
            &format!("{GATEWAY_V4}/32"),
            "dev",
            "lo",
        ],
    )?;
    ns(NODE_NS, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns(
        NODE_NS,
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    )?;
    for p in PODS {
        let netns = p.netns();
        let host = p.host_iface();
        sh(&["ip", "netns", "add", &netns])?;
        sh(&[
            "ip", "link", "add", &host, "netns", NODE_NS, "type", "veth", "peer", "name", "eth0",
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
            NODE_NS,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{host}.accept_dad=0"),
            ],
        )?;
        ns(NODE_NS, &["ip", "link", "set", &host, "up"])?;
        ns(
            NODE_NS,
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
            NODE_NS,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{host}.proxy_arp=1"),
            ],
        )?;
        ns(
            NODE_NS,
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
            NODE_NS,
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
    sh(&["ip", "netns", "add", WORLD_NS])?;
    sh(&[
        "ip",
        "link",
        "add",
        WORLD_IFACE,
        "netns",
        NODE_NS,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        WORLD_NS,
    ])?;
    ns(WORLD_NS, &["ip", "link", "set", "lo", "up"])?;
    for a in WORLD_ADDRS {
        ns(
            WORLD_NS,
            &["ip", "addr", "add", &format!("{a}/32"), "dev", "eth0"],
        )?;
    }
    ns(WORLD_NS, &["ip", "link", "set", "eth0", "up"])?;
    ns(
        WORLD_NS,
        &[
            "ip", "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link",
        ],
    )?;
    ns(
        WORLD_NS,
        &[
            "ip", "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0",
        ],
    )?;
    ns(NODE_NS, &["ip", "link", "set", WORLD_IFACE, "up"])?;
    ns(
        NODE_NS,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{WORLD_IFACE}.proxy_arp=1"),
        ],
    )?;
    for a in WORLD_ADDRS {
        ns(
            NODE_NS,
            &["ip", "route", "add", &format!("{a}/32"), "dev", WORLD_IFACE],
        )?;
    }
    Ok(())
}

/// Removes every lab namespace (and with them the veth pairs). Missing ones are ignored.
pub fn down() -> anyhow::Result<()> {
    let mut names: Vec<String> = PODS.iter().map(Pod::netns).collect();
    names.push(WORLD_NS.to_owned());
    names.push(NODE_NS.to_owned());
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
