//! Tenancy end to end on a real cluster (not run in CI: there is no API server on the build
//! machines). The same scenario as `tests/tests/tenancy_lab_root.rs`, with the agent in
//! Kubernetes mode and the controllers as the chart's Deployment.
//!
//! Preconditions: a cluster with a veth-based CNI, the catalyst chart installed with the
//! controllers enabled (`helm install catalyst deploy/helm/catalyst -n catalyst-system
//! --create-namespace`), the agent `DaemonSet` and the controllers Deployment ready, and Cilium's
//! CRDs present (`cilium.io/v2` `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy`: install them
//! from Cilium's release, or run Cilium itself). Run:
//!
//! ```sh
//! CATALYST_E2E_KUBECONFIG=~/.kube/config cargo test -p catalyst-controllers --test k8s_e2e -- --ignored
//! ```
//!
//! Creates Organizations `e2e-acme-<pid>` and `e2e-globex-<pid>` with one namespace each, a
//! server in acme's namespace and client Jobs in both; checks that acme's client connects and
//! globex's does not, that a grant opens exactly its port, and that deleting the Organizations
//! removes their policies. Everything created is deleted at the end. Image:
//! `CATALYST_E2E_AGNHOST` (default `registry.k8s.io/e2e-test-images/agnhost:2.53`).

#![allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
};
use serde_json::json;

async fn client() -> Option<Client> {
    let path = std::env::var_os("CATALYST_E2E_KUBECONFIG")?;
    let kc = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Some(Client::try_from(cfg).expect("client"))
}

fn agnhost() -> String {
    std::env::var("CATALYST_E2E_AGNHOST")
        .unwrap_or_else(|_| "registry.k8s.io/e2e-test-images/agnhost:2.53".to_owned())
}

fn api(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
    )
}

async fn connects(client: &Client, ns: &str, name: &str, target: &str) -> bool {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": agnhost(), "args": ["connect", target, "--timeout=5s"]}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    for _ in 0..120 {
        let s = jobs
            .get(name)
            .await
            .expect("get job")
            .status
            .unwrap_or_default();
        if s.succeeded.unwrap_or(0) > 0 {
            return true;
        }
        if s.failed.unwrap_or(0) > 0 {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("job {name} did not finish");
}

/// Polls `$cond` (an expression that may `.await`) once a second for a minute.
macro_rules! wait {
    ($what:expr, $cond:expr) => {{
        let mut ok = false;
        for _ in 0..60 {
            if $cond {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(ok, "timed out waiting for {}", $what);
    }};
}

#[tokio::test]
#[ignore = "needs a real cluster: set CATALYST_E2E_KUBECONFIG and run with --ignored (docs/testing.md)"]
async fn e2e_tenancy_isolates_organizations() {
    let Some(client) = client().await else {
        panic!("set CATALYST_E2E_KUBECONFIG to a cluster with the catalyst chart installed");
    };
    let pid = std::process::id();
    let (acme, globex) = (format!("e2e-acme-{pid}"), format!("e2e-globex-{pid}"));
    let orgs = api(
        &client,
        "orgs.openova.io",
        "v1",
        "Organization",
        "organizations",
    );
    let envs = api(
        &client,
        "catalyst.openova.io",
        "v1",
        "Environment",
        "environments",
    );
    let result = tokio::spawn(scenario(client.clone(), acme.clone(), globex.clone())).await;
    for o in [&acme, &globex] {
        let _ = envs
            .delete(&format!("{o}-prod"), &DeleteParams::default())
            .await;
        let _ = orgs.delete(o, &DeleteParams::default()).await;
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(o, &DeleteParams::default())
            .await;
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(client: Client, acme: String, globex: String) {
    let orgs = api(
        &client,
        "orgs.openova.io",
        "v1",
        "Organization",
        "organizations",
    );
    let envs = api(
        &client,
        "catalyst.openova.io",
        "v1",
        "Environment",
        "environments",
    );
    for o in [&acme, &globex] {
        let org: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "orgs.openova.io/v1", "kind": "Organization",
            "metadata": {"name": o}, "spec": {"sovereign": "e2e"}}),
        )
        .unwrap();
        orgs.create(&PostParams::default(), &org)
            .await
            .expect("create Organization");
        let env: DynamicObject = serde_json::from_value(json!({"apiVersion": "catalyst.openova.io/v1", "kind": "Environment",
            "metadata": {"name": format!("{o}-prod")},
            "spec": {"organization": o, "name": "prod", "deletionPolicy": "Delete", "namespaces": [{"name": o}]}})).unwrap();
        envs.create(&PostParams::default(), &env)
            .await
            .expect("create Environment");
    }
    let cnps = |ns: &str| {
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
                "ciliumnetworkpolicies",
            ),
        )
    };
    let acme_cnps = cnps(&acme);
    wait!(
        "acme's generated policies",
        acme_cnps
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.len() >= 4)
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &acme);
    let server: Pod = serde_json::from_value(json!({"metadata": {"name": "server", "labels": {"app": "server"}},
        "spec": {"containers": [{"name": "c", "image": agnhost(), "args": ["netexec", "--http-port=8080", "--udp-port=-1"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &server)
        .await
        .expect("create server");
    let mut ip = String::new();
    wait!("server IP", {
        ip = pods
            .get("server")
            .await
            .ok()
            .and_then(|p| p.status?.pod_ip)
            .unwrap_or_default();
        !ip.is_empty()
    });
    let target = format!("{ip}:8080");
    assert!(
        connects(&client, &acme, "same-org", &target).await,
        "within the Organization"
    );
    assert!(
        !connects(&client, &globex, "cross-org", &target).await,
        "across Organizations"
    );
    orgs.patch(
        &acme,
        &PatchParams::apply("e2e"),
        &Patch::Merge(json!({"spec": {"grants": [
        {"from": {"organization": globex}, "ports": [{"port": 8080}]}]}})),
    )
    .await
    .expect("add grant");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        connects(&client, &globex, "granted", &target).await,
        "the granted port"
    );
    orgs.delete(&acme, &DeleteParams::default())
        .await
        .expect("delete acme");
    let ccnps = api(
        &client,
        "cilium.io",
        "v2",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
    );
    let name = format!("catalyst-tenancy-{acme}");
    wait!(
        "acme's baseline removed",
        matches!(ccnps.get_opt(&name).await, Ok(None))
    );
}
