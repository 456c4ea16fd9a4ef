//! End-to-end policy enforcement in the netns lab with real traffic and the real agent.
//! Needs root (network namespaces, eBPF); `cargo xtask test` runs it.
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

use std::time::Duration;

use catalyst_tests::{
    lab::{self, WORLD_ADDRS, pod},
    probe::{Pinger, TcpSession, tcp_echo_bulk},
    scenario::{PROBE_TIMEOUT, Scenario, root_or_skip},
};

fn web() -> &'static str {
    pod("web").ipv4
}
fn db() -> &'static str {
    pod("db").ipv4
}

fn cnp(name: &str, app: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n{body}"
    )
}

const WEB_ALLOW_CLIENT_80: &str = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";

#[test]
fn root_no_policy_allows_everything() {
    if !root_or_skip("root_no_policy_allows_everything") {
        return;
    }
    let s = Scenario::start("nopolicy", &[], false).unwrap();
    assert!(s.tcp("client", web(), 80));
    assert!(s.tcp("client", web(), 22));
    assert!(s.udp("client", web(), 80));
    assert!(s.tcp("other", db(), 5432));
    assert!(s.tcp("client", WORLD_ADDRS[0], 443));
    assert!(s.tcp("client", pod("web").ipv6, 80));
    // No policy enforces either direction: flows are traces, and as in Hubble no policy-verdict
    // event is emitted for a direction no policy enforces.
    let f = s
        .wait_flow("trace client->web:80", |f| {
            f["event_type"] == "trace" && f["destination_port"] == 80
        })
        .unwrap();
    assert_eq!(f["verdict"], "FORWARDED");
    assert!(
        s.flows()
            .iter()
            .all(|f| f["event_type"] != "policy-verdict"),
        "no policy-verdict events without a policy"
    );
}

#[test]
fn root_ingress_default_deny_and_allow_by_label_and_port() {
    if !root_or_skip("root_ingress_default_deny_and_allow_by_label_and_port") {
        return;
    }
    let s = Scenario::start(
        "ingress",
        &[("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))],
        false,
    )
    .unwrap();
    // Allowed by label and port.
    assert!(
        s.tcp("client", web(), 80),
        "client -> web:80 allowed by label+port"
    );
    // Same peer, other port: default deny (133).
    assert!(!s.tcp("client", web(), 22), "client -> web:22 denied");
    // Other label (db) to the allowed port: default deny.
    assert!(!s.tcp("db", web(), 80), "db -> web:80 denied");
    // Another namespace with the right label: peers default to the policy's namespace.
    assert!(!s.tcp("other", web(), 80), "other/client -> web:80 denied");
    // Protocol matters.
    assert!(!s.udp("client", web(), 80), "UDP to a TCP-only port denied");
    // IPv6 follows the same policy.
    assert!(
        s.tcp("client", pod("web").ipv6, 80),
        "IPv6 client -> web:80 allowed"
    );
    assert!(
        !s.tcp("client", pod("web").ipv6, 22),
        "IPv6 client -> web:22 denied"
    );
    // Egress of web is not enforced: web may still call anything.
    assert!(s.tcp("web", db(), 5432));
    let f = s
        .wait_flow("drop client->web:22", |f| {
            f["verdict"] == "DROPPED"
                && f["destination_port"] == 22
                && f["source_ip"] == pod("client").ipv4
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 133);
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["traffic_direction"], "INGRESS");
    let f = s
        .wait_flow("allow client->web:80", |f| {
            f["event_type"] == "policy-verdict"
                && f["traffic_direction"] == "INGRESS"
                && f["destination_port"] == 80
                && f["ip_version"] == 4
        })
        .unwrap();
    assert_eq!(f["allowed_by"][0]["name"], "web");
    assert_eq!(f["destination"]["pod_name"], "web");
    assert_eq!(f["source"]["pod_name"], "client");
}

#[test]
fn root_egress_default_deny() {
    if !root_or_skip("root_egress_default_deny") {
        return;
    }
    let body = "  egress:\n    - toEndpoints: [{matchLabels: {app: web}}]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
    let s = Scenario::start(
        "egress",
        &[("client.yaml", &cnp("client-egress", "client", body))],
        false,
    )
    .unwrap();
    assert!(s.tcp("client", web(), 80));
    assert!(
        !s.tcp("client", web(), 8080),
        "egress default deny on other ports"
    );
    assert!(!s.tcp("client", db(), 5432));
    assert!(!s.tcp("client", WORLD_ADDRS[0], 443));
    // Ingress of client is not enforced.
    assert!(s.tcp("web", db(), 5432));
    let f = s
        .wait_flow("egress drop to world", |f| {
            f["verdict"] == "DROPPED" && f["destination_ip"] == WORLD_ADDRS[0]
        })
        .unwrap();
    assert_eq!(f["traffic_direction"], "EGRESS");
    assert_eq!(f["drop_reason"], 133);
}

#[test]
fn root_port_range() {
    if !root_or_skip("root_port_range") {
        return;
    }
    let body = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"8000\", endPort: 8999, protocol: TCP}]}]\n";
    let s = Scenario::start(
        "range",
        &[("web.yaml", &cnp("web-range", "web", body))],
        false,
    )
    .unwrap();
    assert!(s.tcp("client", web(), 8080), "8080 inside 8000-8999");
    assert!(!s.tcp("client", web(), 9000), "9000 outside the range");
    assert!(!s.tcp("client", web(), 80), "80 outside the range");
}

#[test]
fn root_named_ports_resolve_through_declared_ports() {
    if !root_or_skip("root_named_ports_resolve_through_declared_ports") {
        return;
    }
    // Ingress: `http` is what web declares for port 80 (8080 is `http-alt`).
    let web_body = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: http, protocol: TCP}]}]\n";
    // Egress: `postgres` resolves through the ports every endpoint declares (db: 5432).
    let client_body = "  egress:\n    - toEndpoints: [{matchLabels: {app: db}}]\n      toPorts: [{ports: [{port: postgres}]}]\n    - toEndpoints: [{matchLabels: {app: web}}]\n";
    let s = Scenario::start(
        "named",
        &[
            ("web.yaml", &cnp("web-named", "web", web_body)),
            ("client.yaml", &cnp("client-named", "client", client_body)),
        ],
        false,
    )
    .unwrap();
    assert!(s.tcp("client", web(), 80), "http = 80 on web");
    assert!(!s.tcp("client", web(), 8080), "http-alt is not http");
    assert!(s.tcp("client", db(), 5432), "egress to postgres = 5432");
    assert!(!s.tcp("other", web(), 80), "only client is allowed in");
}

#[test]
fn root_deny_beats_allow_181_versus_default_deny_133() {
    if !root_or_skip("root_deny_beats_allow_181_versus_default_deny_133") {
        return;
    }
    let body = "  ingress:\n    - fromEndpoints: [{}]\n  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n";
    let allow_db = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n";
    let s = Scenario::start(
        "deny",
        &[
            ("web.yaml", &cnp("web-deny", "web", body)),
            ("db.yaml", &cnp("db-allow", "db", allow_db)),
        ],
        false,
    )
    .unwrap();
    assert!(
        s.tcp("client", web(), 80),
        "allowed by the namespace-wide allow"
    );
    assert!(!s.tcp("client", web(), 8080), "deny rule beats the allow");
    assert!(s.tcp("db", web(), 8080), "deny applies to app=client only");
    assert!(
        !s.tcp("web", db(), 5432),
        "no allow for web on db: default deny"
    );
    let deny = s
        .wait_flow("181 drop", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 8080
        })
        .unwrap();
    assert_eq!(deny["drop_reason"], 181);
    assert_eq!(deny["drop_reason_desc"], "POLICY_DENY");
    assert_eq!(deny["denied_by"][0]["name"], "web-deny");
    let dflt = s
        .wait_flow("133 drop", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 5432
        })
        .unwrap();
    assert_eq!(dflt["drop_reason"], 133);
}

#[test]
fn root_egress_deny_only_policy_switches_egress_to_default_deny() {
    if !root_or_skip("root_egress_deny_only_policy_switches_egress_to_default_deny") {
        return;
    }
    let body = "  egressDeny:\n    - toEndpoints: [{matchLabels: {app: db}}]\n";
    let s = Scenario::start(
        "egressdeny",
        &[("client.yaml", &cnp("client-deny-db", "client", body))],
        false,
    )
    .unwrap();
    assert!(!s.tcp("client", db(), 5432), "explicitly denied");
    assert!(
        !s.tcp("client", web(), 80),
        "egress is default deny once a policy has an egress section"
    );
    let f = s
        .wait_flow("133 drop", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 80
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 133);
    let f = s
        .wait_flow("181 drop", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 5432
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 181);
}

#[test]
fn root_cidr_with_except() {
    if !root_or_skip("root_cidr_with_except") {
        return;
    }
    let body = "  egress:\n    - toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.20/32]}]\n      toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n";
    let s = Scenario::start(
        "cidr",
        &[("client.yaml", &cnp("client-cidr", "client", body))],
        false,
    )
    .unwrap();
    assert!(s.tcp("client", WORLD_ADDRS[0], 443));
    assert!(!s.tcp("client", WORLD_ADDRS[1], 443), "excepted address");
    // CIDR rules do not select in-cluster peers.
    assert!(!s.tcp("client", web(), 80));
}

#[test]
fn root_replies_of_allowed_connections_pass() {
    if !root_or_skip("root_replies_of_allowed_connections_pass") {
        return;
    }
    // web: ingress from client on 80; egress only to db. Replies to client must still pass
    // web's egress, and client's enforced ingress (world only) must let web's replies in.
    let web_p = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}, {port: \"80\", protocol: UDP}]}]\n  egress:\n    - toEndpoints: [{matchLabels: {app: db}}]\n";
    let client_p = "  ingress:\n    - fromEntities: [world]\n";
    let s = Scenario::start(
        "replies",
        &[
            ("web.yaml", &cnp("web", "web", web_p)),
            ("client.yaml", &cnp("client", "client", client_p)),
        ],
        false,
    )
    .unwrap();
    assert!(
        s.tcp("client", web(), 80),
        "TCP replies pass both enforced directions"
    );
    assert!(s.udp("client", web(), 80), "UDP replies pass");
    assert!(
        !s.tcp("web", pod("client").ipv4, 80),
        "but web may not open connections to client"
    );
    let f = s
        .wait_flow("reply", |f| f["is_reply"] == true && f["source_port"] == 80)
        .unwrap();
    assert_eq!(f["verdict"], "FORWARDED");
}

#[test]
fn root_audit_mode_forwards_and_reports() {
    if !root_or_skip("root_audit_mode_forwards_and_reports") {
        return;
    }
    let s = Scenario::start(
        "audit",
        &[("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))],
        true,
    )
    .unwrap();
    assert!(s.tcp("client", web(), 22), "audit forwards would-be drops");
    let f = s
        .wait_flow("audit verdict", |f| {
            f["verdict"] == "AUDIT" && f["destination_port"] == 22
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 133);
    assert!(s.tcp("client", web(), 80));
}

#[test]
fn root_policy_change_revokes_established_connection() {
    if !root_or_skip("root_policy_change_revokes_established_connection") {
        return;
    }
    let mut s = Scenario::start(
        "revoke",
        &[("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))],
        false,
    )
    .unwrap();
    let mut session = TcpSession::open(&pod("client").netns(), web(), 80, PROBE_TIMEOUT)
        .unwrap()
        .expect("connects");
    assert!(session.ping());
    // Keep web's ingress enforced, but no longer allow client on 80.
    let only_db = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: db}}]\n";
    s.set_policy("web.yaml", &cnp("web", "web", only_db))
        .unwrap();
    assert!(
        !session.ping(),
        "the established connection is revoked on its next packet"
    );
    let f = s
        .wait_flow("revocation drop", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 80
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 133);
    // And re-allowed.
    s.set_policy("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))
        .unwrap();
    assert!(s.tcp("client", web(), 80));
}

#[test]
fn root_invalid_policy_is_rejected_and_the_old_one_stays() {
    if !root_or_skip("root_invalid_policy_is_rejected_and_the_old_one_stays") {
        return;
    }
    let mut s = Scenario::start(
        "invalid",
        &[("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))],
        false,
    )
    .unwrap();
    assert!(!s.tcp("client", web(), 22));
    let bad = cnp(
        "web",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"70000\", protocol: TCP}]}]\n",
    );
    std::fs::write(s.dir.join("policies/web.yaml"), bad).unwrap();
    s.agent()
        .wait_log(
            "rejected configuration or policy change",
            Duration::from_secs(10),
        )
        .unwrap();
    let line = s
        .agent()
        .log_lines()
        .into_iter()
        .find(|l| l.contains("rejected configuration"))
        .unwrap();
    assert!(line.contains("web.yaml"), "error names the file: {line}");
    assert!(
        line.contains("toPorts[0].ports[0].port"),
        "error names the field: {line}"
    );
    // The policy in force stays.
    assert!(s.tcp("client", web(), 80));
    assert!(!s.tcp("client", web(), 22));
}

#[test]
fn root_agent_restart_keeps_enforcing_without_a_gap() {
    if !root_or_skip("root_agent_restart_keeps_enforcing_without_a_gap") {
        return;
    }
    let mut s = Scenario::start(
        "restart",
        &[("web.yaml", &cnp("web", "web", WEB_ALLOW_CLIENT_80))],
        false,
    )
    .unwrap();
    let mut session = TcpSession::open(&pod("client").netns(), web(), 80, PROBE_TIMEOUT)
        .unwrap()
        .expect("connects");
    assert!(session.ping());
    s.stop_agent().unwrap();
    // Agent gone: enforcement continues from the pinned state.
    assert!(
        !s.tcp("client", web(), 22),
        "still denied with the agent stopped"
    );
    assert!(
        s.tcp("client", web(), 80),
        "still allowed with the agent stopped"
    );
    assert!(
        session.ping(),
        "established connection survives the agent stopping"
    );
    // Restart while a connection is pinging continuously: not one round trip fails.
    let pinger = Pinger::start(session, Duration::from_millis(2));
    s.start_agent().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = pinger.stop();
    assert!(ok > 10, "pinged through the restart ({ok} round trips)");
    assert_eq!(failed, 0, "no round trip failed across the restart");
    assert!(
        !s.tcp("client", web(), 22),
        "still denied after the restart"
    );
    assert!(s.tcp("client", web(), 80));
}

#[test]
fn root_policy_churn_never_drops_flows_both_policies_allow() {
    if !root_or_skip("root_policy_churn_never_drops_flows_both_policies_allow") {
        return;
    }
    // Every variant allows client -> web:80; they differ in everything else.
    let variants = [
        WEB_ALLOW_CLIENT_80.to_owned(),
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}, {port: \"8000\", endPort: 8999, protocol: TCP}]}]\n    - fromEndpoints: [{matchLabels: {app: db}}]\n".to_owned(),
        "  ingress:\n    - fromEndpoints: [{}]\n  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: db}}]\n".to_owned(),
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n  egress:\n    - toEndpoints: [{matchLabels: {app: db}}]\n".to_owned(),
    ];
    let mut s = Scenario::start(
        "churn",
        &[("web.yaml", &cnp("web", "web", &variants[0]))],
        false,
    )
    .unwrap();
    let session = TcpSession::open(&pod("client").netns(), web(), 80, Duration::from_secs(2))
        .unwrap()
        .expect("connects");
    let pinger = Pinger::start(session, Duration::ZERO);
    let client_ns = pod("client").netns();
    let mut new_ok = 0;
    for round in 0..16 {
        let v = &variants[(round + 1) % variants.len()];
        s.set_policy("web.yaml", &cnp("web", "web", v)).unwrap();
        // New connections opened right after each change are allowed too.
        for _ in 0..3 {
            assert!(
                catalyst_tests::probe::tcp_echo(&client_ns, web(), 80, Duration::from_secs(2))
                    .unwrap(),
                "new connection refused after change {round}"
            );
            new_ok += 1;
        }
    }
    let (ok, failed) = pinger.stop();
    assert!(ok > 100, "{ok} round trips during churn");
    assert_eq!(
        failed, 0,
        "no round trip of the long-lived connection failed during 16 policy changes"
    );
    assert_eq!(new_ok, 48);
    let counters = s
        .agent()
        .log_lines()
        .iter()
        .filter(|l| l.contains("datapath in sync"))
        .count();
    assert!(counters >= 17, "each change was applied ({counters} syncs)");
}

#[test]
fn root_fragments_of_an_allowed_datagram_pass_and_of_a_denied_one_drop() {
    if !root_or_skip("root_fragments_of_an_allowed_datagram_pass_and_of_a_denied_one_drop") {
        return;
    }
    let body = "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: \"9000\", protocol: UDP}, {port: \"80\", protocol: UDP}]}]\n";
    let s = Scenario::start(
        "fragments",
        &[("web.yaml", &cnp("web-udp", "web", body))],
        false,
    )
    .unwrap();
    // 4,000 bytes leave the pod's 1,500-byte link as three fragments; only the first carries
    // the UDP header. All three (and the three of the echo) must pass for the echo to arrive.
    assert!(s.udp("client", web(), 9000), "small datagram, allowed port");
    assert!(
        s.udp_sized("client", web(), 9000, 4000),
        "fragmented datagram of an allowed flow"
    );
    assert!(
        s.udp_sized("client", pod("web").ipv6, 80, 4000),
        "IPv6: fragmented datagram of an allowed flow (fragment header)"
    );
    assert!(
        !s.udp_sized("client", web(), 8080, 4000),
        "fragmented datagram to a denied port"
    );
    let f = s
        .wait_flow("drop of the denied datagram", |f| {
            f["verdict"] == "DROPPED" && f["destination_port"] == 8080
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 133);
    assert!(
        s.flows()
            .iter()
            .all(|f| f["drop_reason"] != 175 && f["drop_reason"] != 157),
        "no fragment was left unattributed"
    );
}

#[test]
fn root_path_mtu_discovery_works_under_default_deny() {
    if !root_or_skip("root_path_mtu_discovery_works_under_default_deny") {
        return;
    }
    // client: egress only to the world on 443, ingress only from web: the node's ICMP
    // "fragmentation needed" has no allow rule of its own and must pass as related.
    let body = "  egress:\n    - toCIDR: [198.51.100.0/24]\n      toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: web}}]\n";
    let s = Scenario::start(
        "pmtu",
        &[("client.yaml", &cnp("client-pmtu", "client", body))],
        false,
    )
    .unwrap();
    lab::set_world_link_mtu(1280).unwrap();
    let client = pod("client").netns();
    // 64 KiB echoed: the client's first full-sized segments (1,500 bytes, DF) do not fit the
    // 1,280-byte link; without the ICMP error the transfer stalls (a PMTU black hole).
    assert!(
        tcp_echo_bulk(
            &client,
            WORLD_ADDRS[0],
            443,
            64 * 1024,
            Duration::from_secs(10)
        )
        .unwrap(),
        "bulk transfer across the smaller-MTU link"
    );
    // The ICMP error reached the client: its route to the world learnt the smaller path MTU.
    let route = std::process::Command::new("ip")
        .args(["-n", &client, "route", "get", WORLD_ADDRS[0]])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1280"),
        "path MTU learnt from the node's ICMP error: {route}"
    );
    // The datapath saw the ICMP error and let it through (no drop of an ICMP packet).
    assert!(
        s.flows()
            .iter()
            .all(|f| !(f["verdict"] == "DROPPED" && f["protocol"] == "ICMPv4")),
        "no ICMP error dropped"
    );
}
