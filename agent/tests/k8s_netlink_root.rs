//! Interface discovery against the real kernel (needs root): private network namespaces
//! (`catk8s-<pid>-…`, removed at the end) with a Calico-style veth + /32 route and a
//! flannel-style bridge, resolved through rtnetlink from inside the "node" namespace.

use std::{net::IpAddr, os::fd::AsRawFd as _, process::Command};

use catalyst_agent::k8s::netlink::{Netlink, Resolution, resolve};
use catalyst_tests::require::{Need, require};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces that are deleted when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Resolves `ips` from inside network namespace `ns` (a thread that joined it).
fn resolve_in(ns: &str, ips: Vec<IpAddr>) -> Vec<Resolution> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        // SAFETY: `f` is an open namespace file; only this thread changes namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ips.into_iter()
            .map(|ip| resolve(&Netlink, ip).expect("netlink"))
            .collect()
    })
    .join()
    .unwrap()
}

fn ifindex_in(ns: &str, iface: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", iface])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.split(':').next().unwrap().trim().parse().unwrap()
}

/// A node namespace with a Calico-style pod (`cali1`, 10.77.0.5/32 route) and a bridge-style
/// pod (`veth2` on `cni0`, 10.88.0.7 in 10.88.0.0/24). Returns the guard, the node and the
/// bridged pod's namespace.
fn topology() -> (Namespaces, String, String) {
    let id = std::process::id();
    let node = format!("catk8s-{id}-node");
    let p1 = format!("catk8s-{id}-p1");
    let p2 = format!("catk8s-{id}-p2");
    let guard = Namespaces(vec![node.clone(), p1.clone(), p2.clone()]);
    for ns in [&node, &p1, &p2] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // Calico style: veth, /32 route on the host side.
    sh(&[
        "ip", "-n", &node, "link", "add", "cali1", "type", "veth", "peer", "name", "eth0", "netns",
        &p1,
    ]);
    sh(&["ip", "-n", &node, "link", "set", "cali1", "up"]);
    sh(&["ip", "-n", &p1, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &p1,
        "addr",
        "add",
        "10.77.0.5/32",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &node,
        "route",
        "add",
        "10.77.0.5/32",
        "dev",
        "cali1",
        "scope",
        "link",
    ]);
    // Bridge style: a subnet on a bridge, the pod's veth a port of it.
    sh(&["ip", "-n", &node, "link", "add", "cni0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        "10.88.0.1/24",
        "dev",
        "cni0",
    ]);
    sh(&["ip", "-n", &node, "link", "set", "cni0", "up"]);
    sh(&[
        "ip", "-n", &node, "link", "add", "veth2", "type", "veth", "peer", "name", "eth0", "netns",
        &p2,
    ]);
    sh(&[
        "ip", "-n", &node, "link", "set", "veth2", "master", "cni0", "up",
    ]);
    sh(&["ip", "-n", &p2, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &p2,
        "addr",
        "add",
        "10.88.0.7/24",
        "dev",
        "eth0",
    ]);
    (guard, node, p2)
}

#[test]
fn root_discovers_veth_routes_and_bridge_ports_in_a_real_netns() {
    if !require(
        "root_discovers_veth_routes_and_bridge_ports_in_a_real_netns",
        &[Need::Root],
    ) {
        return;
    }
    let (_guard, node, p2) = topology();
    // Before any traffic: no neighbour entry, so not found yet (retried by the agent).
    let before = resolve_in(&node, vec!["10.88.0.7".parse().unwrap()]);
    assert!(
        matches!(&before[0], Resolution::NotFound { reason } if reason.contains("neighbour")),
        "{before:?}"
    );
    // Traffic teaches the node the pod's MAC and the bridge its port.
    sh(&[
        "ip",
        "netns",
        "exec",
        &p2,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.88.0.1",
    ]);

    let got = resolve_in(
        &node,
        vec![
            "10.77.0.5".parse().unwrap(),
            "10.88.0.7".parse().unwrap(),
            "10.88.0.99".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        ],
    );
    assert_eq!(
        got[0],
        Resolution::Found {
            ifindex: ifindex_in(&node, "cali1"),
            name: "cali1".into()
        }
    );
    assert_eq!(
        got[1],
        Resolution::Found {
            ifindex: ifindex_in(&node, "veth2"),
            name: "veth2".into()
        }
    );
    assert!(
        matches!(&got[2], Resolution::NotFound { .. }),
        "{:?}",
        got[2]
    );
    assert!(
        matches!(&got[3], Resolution::NotFound { reason } if reason.contains("no route")),
        "{:?}",
        got[3]
    );
}
