//! Tenancy end to end: catalyst-controllers (standalone) renders Organizations into Cilium
//! policies in the directory the real agent reads, and real traffic in the netns lab shows the
//! isolation: within an Organization and to DNS passes, across Organizations is dropped (the
//! flow names the generated policy), a grant opens exactly its port, deleting an Organization
//! removes exactly its policies. Needs root; `cargo xtask test` runs it.

use std::{collections::BTreeMap, path::Path, time::Duration};

use catalyst_tests::{
    controllers::ControllersProcess,
    lab::{Pod, WORLD_ADDRS, pod, world_ns},
    probe::EchoServer,
    scenario::{Scenario, root_or_skip},
};

const NS_ORG: &str = "io.cilium.k8s.namespace.labels.openova.io/organization";

/// The labels the agent sees on each pod: its own, plus its namespace's labels as the generated
/// Namespace objects carry them (checked below against the generated objects).
fn tenant_labels(p: &Pod) -> String {
    let org = if p.namespace == "shop" {
        "acme"
    } else {
        "globex"
    };
    format!("app: {}, \"{NS_ORG}\": {org}", p.app)
}

/// The cluster resolver stands at the second world address, as a remote endpoint of
/// kube-system with the kube-dns label.
const DNS_PEER: &str = "peers:\n  - {prefix: 198.51.100.20/32, labels: {\"io.kubernetes.pod.namespace\": kube-system, k8s-app: kube-dns}}\n";

fn resources(grant: bool, with_acme: bool) -> String {
    let grant = if grant {
        "  grants:\n    - description: globex calls the shop API\n      from: {organization: globex}\n      ports: [{port: 8080}]\n"
    } else {
        ""
    };
    let acme = format!(
        "apiVersion: orgs.openova.io/v1\nkind: Organization\nmetadata: {{name: acme}}\nspec:\n  sovereign: eu\n  access: {{developer: [acme-devs]}}\n{grant}---\napiVersion: catalyst.openova.io/v1\nkind: Environment\nmetadata: {{name: acme-prod}}\nspec:\n  organization: acme\n  name: prod\n  namespaces: [{{name: shop, application: shop}}]\n---\n"
    );
    let globex = "apiVersion: orgs.openova.io/v1\nkind: Organization\nmetadata: {name: globex}\nspec:\n  sovereign: eu\n---\napiVersion: catalyst.openova.io/v1\nkind: Environment\nmetadata: {name: globex-prod}\nspec:\n  organization: globex\n  name: prod\n  namespaces: [{name: other}]\n";
    if with_acme {
        format!("{acme}{globex}")
    } else {
        globex.to_owned()
    }
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    out
}

fn syncs(s: &mut Scenario) -> usize {
    s.agent()
        .log_lines()
        .iter()
        .filter(|l| l.contains("datapath in sync"))
        .count()
}

/// Writes the resources and waits until the controllers reconciled and the agent applied it.
fn change(s: &mut Scenario, ctl: &mut ControllersProcess, text: &str) {
    let (n_sync, n_rec) = (
        syncs(s),
        ctl.log_lines()
            .iter()
            .filter(|l| l.contains("reconciled"))
            .count(),
    );
    std::fs::write(s.dir.join("resources/tenancy.yaml"), text).unwrap();
    ctl.wait_log_count("reconciled", n_rec + 1, Duration::from_secs(20))
        .unwrap();
    s.agent()
        .wait_log_count("datapath in sync", n_sync + 1, Duration::from_secs(20))
        .unwrap();
}

#[test]
fn root_tenancy_isolates_organizations_and_grants_open_exactly_their_port() {
    if !root_or_skip("root_tenancy_isolates_organizations_and_grants_open_exactly_their_port") {
        return;
    }
    let mut s = Scenario::start_labelled("tenancy", &[], false, DNS_PEER, tenant_labels).unwrap();
    let _dns = EchoServer::start(world_ns(), WORLD_ADDRS[1], &[53]).unwrap();
    let web = pod("web").ipv4;
    // No policy yet: everything passes.
    assert!(s.tcp("other", web, 80));
    assert!(s.tcp("client", WORLD_ADDRS[0], 443));

    std::fs::create_dir_all(s.dir.join("resources")).unwrap();
    std::fs::write(s.dir.join("resources/tenancy.yaml"), resources(false, true)).unwrap();
    let metrics_port = 19_967;
    std::fs::write(
        s.dir.join("controllers.yaml"),
        format!("mode: standalone\nmetrics: {{listen_address: 127.0.0.1:{metrics_port}}}\nstandalone: {{input: resources, output: ., interval_ms: 100}}\n"),
    )
    .unwrap();
    let n_sync = syncs(&mut s);
    let mut ctl = ControllersProcess::start(&s.dir.join("controllers.yaml")).unwrap();
    s.agent()
        .wait_log_count("datapath in sync", n_sync + 1, Duration::from_secs(20))
        .unwrap();

    // The generated namespaces carry the labels the agent was given for their pods.
    let shop_ns =
        std::fs::read_to_string(s.dir.join("objects/namespace-_cluster-shop.yaml")).unwrap();
    assert!(
        shop_ns.contains("openova.io/organization: acme"),
        "{shop_ns}"
    );
    assert!(
        shop_ns.contains("openova.io/application: shop"),
        "{shop_ns}"
    );

    // Within the Organization (same namespace) passes; DNS to the cluster resolver passes.
    assert!(
        s.tcp("client", web, 80),
        "client -> web (same Organization)"
    );
    assert!(
        s.tcp("client", pod("db").ipv4, 5432),
        "client -> db (same Organization)"
    );
    assert!(
        s.udp("client", WORLD_ADDRS[1], 53),
        "client -> DNS over UDP"
    );
    assert!(
        s.tcp("client", WORLD_ADDRS[1], 53),
        "client -> DNS over TCP"
    );
    // Tenants are default deny: the world is not reachable.
    assert!(
        !s.tcp("client", WORLD_ADDRS[0], 443),
        "client -> world denied"
    );
    // Across Organizations: dropped, and the flow names the generated baseline.
    assert!(!s.tcp("other", web, 80), "globex -> acme denied");
    let f = s
        .wait_flow("cross-tenant drop", |f| {
            f["verdict"] == "DROPPED"
                && f["source_ip"] == pod("other").ipv4
                && f["destination_port"] == 80
        })
        .unwrap();
    assert_eq!(f["drop_reason"], 181, "{f}");
    assert_eq!(f["denied_by"][0]["name"], "catalyst-tenancy-globex", "{f}");

    // A grant from acme to globex on 8080 opens exactly that port.
    change(&mut s, &mut ctl, &resources(true, true));
    assert!(s.tcp("other", web, 8080), "granted port passes");
    assert!(!s.tcp("other", web, 80), "other ports stay closed");
    assert!(!s.tcp("other", web, 9000), "other ports stay closed");
    assert!(s.tcp("client", web, 80), "acme's own traffic unchanged");

    // Removing the grant closes the port again.
    change(&mut s, &mut ctl, &resources(false, true));
    assert!(!s.tcp("other", web, 8080), "grant removed: port closed");

    // Deleting acme removes exactly its policies: globex's files are untouched.
    let before = files(&s.dir.join("policies"));
    let globex_before: BTreeMap<_, _> = before
        .iter()
        .filter(|(_, t)| t.contains("catalyst.openova.io/owner: globex"))
        .collect();
    assert!(!globex_before.is_empty());
    change(&mut s, &mut ctl, &resources(false, false));
    let after = files(&s.dir.join("policies"));
    assert!(
        after
            .values()
            .all(|t| !t.contains("catalyst.openova.io/owner: acme")),
        "{after:?}"
    );
    assert!(
        !after
            .keys()
            .any(|k| k.contains("-shop-") || k.contains("catalyst-tenancy-acme")),
        "{after:?}"
    );
    let globex_after: BTreeMap<_, _> = after
        .iter()
        .filter(|(_, t)| t.contains("catalyst.openova.io/owner: globex"))
        .collect();
    assert_eq!(globex_before, globex_after, "globex's policies unchanged");
    // shop is no longer a tenant namespace: its default deny is gone.
    assert!(
        s.tcp("client", WORLD_ADDRS[0], 443),
        "client -> world after acme was deleted"
    );
    ctl.stop().unwrap();
}
