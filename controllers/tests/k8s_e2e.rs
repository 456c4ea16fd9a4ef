//! Tenancy and compliance end to end on a real cluster (not run in CI: there is no API server on
//! the build machines). The same tenancy scenario as `tests/tests/tenancy_lab_root.rs`, with the
//! agent in Kubernetes mode and the controllers as the chart's Deployment; the compliance
//! scenario is the one `compliance_kube_mock.rs` plays against the mock API server.
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
//!
//! Compliance (`e2e_compliance_status_follows_workloads_and_reports`) also needs Kyverno's
//! `wgpolicyk8s.io/v1alpha2` `PolicyReport` CRD (installed with Kyverno, or alone from the
//! wg-policy-prototypes repository) and the chart's default `controllers.config.compliance.enabled:
//! true`. Steps: an Organization and Environment with one namespace; a one-replica Deployment
//! without probes → the Environment's `status.score` appears with `Compliant=False`
//! (`EnforcingCheckFailed`, `probes` among `failingEnforcingChecks`); the Deployment gets probes
//! and requests → `probes` leaves the list and the score rises; a `PolicyReport` with a failing
//! result on the Deployment → the score falls; the report deleted → the score is back. With
//! k3d: `k3d cluster create catalyst-e2e --k3s-arg '--flannel-backend=none@server:*'`, install
//! Cilium's CRDs (or Cilium), the `PolicyReport` CRD, then the chart as above.

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

/// The Environment's status as the compliance aggregator wrote it.
async fn env_status(envs: &Api<DynamicObject>, name: &str) -> serde_json::Value {
    envs.get_status(name)
        .await
        .map(|o| o.data["status"].clone())
        .unwrap_or_default()
}

fn failing_checks(status: &serde_json::Value) -> Vec<String> {
    status["failingEnforcingChecks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
#[ignore = "needs a real cluster: set CATALYST_E2E_KUBECONFIG and run with --ignored (docs/testing.md)"]
async fn e2e_compliance_status_follows_workloads_and_reports() {
    let Some(client) = client().await else {
        panic!("set CATALYST_E2E_KUBECONFIG to a cluster with the catalyst chart installed");
    };
    let org = format!("e2e-compl-{}", std::process::id());
    let result = tokio::spawn(compliance_scenario(client.clone(), org.clone())).await;
    let envs = api(
        &client,
        "catalyst.openova.io",
        "v1",
        "Environment",
        "environments",
    );
    let orgs = api(
        &client,
        "orgs.openova.io",
        "v1",
        "Organization",
        "organizations",
    );
    let _ = envs
        .delete(&format!("{org}-prod"), &DeleteParams::default())
        .await;
    let _ = orgs.delete(&org, &DeleteParams::default()).await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&org, &DeleteParams::default())
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn compliance_scenario(client: Client, org: String) {
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
    let env_name = format!("{org}-prod");
    let o: DynamicObject = serde_json::from_value(json!({"apiVersion": "orgs.openova.io/v1",
        "kind": "Organization", "metadata": {"name": org}, "spec": {"sovereign": "e2e"}}))
    .unwrap();
    orgs.create(&PostParams::default(), &o)
        .await
        .expect("create Organization");
    let e: DynamicObject = serde_json::from_value(json!({"apiVersion": "catalyst.openova.io/v1",
        "kind": "Environment", "metadata": {"name": env_name},
        "spec": {"organization": org, "name": "prod", "deletionPolicy": "Delete",
            "namespaces": [{"name": org, "application": "shop"}]}}))
    .unwrap();
    envs.create(&PostParams::default(), &e)
        .await
        .expect("create Environment");
    let ns_api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    wait!(
        "the Environment's namespace",
        ns_api.get_opt(&org).await.is_ok_and(|n| n.is_some())
    );
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &org);
    let web = |probes: bool| {
        let mut c = json!({"name": "web", "image": agnhost(), "args": ["pause"]});
        if probes {
            c["readinessProbe"] = json!({"tcpSocket": {"port": 8080}});
            c["livenessProbe"] = json!({"tcpSocket": {"port": 8080}});
            c["resources"] =
                json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}});
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c]}}}})
    };
    deployments
        .patch("web", &PatchParams::apply("e2e"), &Patch::Apply(web(false)))
        .await
        .expect("apply Deployment");
    let mut status = serde_json::Value::Null;
    wait!("a score with probes failing", {
        status = env_status(&envs, &env_name).await;
        status["score"].is_number()
            && failing_checks(&status).contains(&"prod/shop: probes".to_owned())
    });
    let compliant = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Compliant")
        .expect("Compliant condition")
        .clone();
    assert_eq!(compliant["status"], "False");
    assert_eq!(compliant["reason"], "EnforcingCheckFailed");
    let before = status["score"].as_f64().unwrap();

    deployments
        .patch(
            "web",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(web(true)),
        )
        .await
        .expect("add probes");
    let mut fixed = 0.0;
    wait!("probes fixed", {
        status = env_status(&envs, &env_name).await;
        fixed = status["score"].as_f64().unwrap_or(0.0);
        !failing_checks(&status).contains(&"prod/shop: probes".to_owned()) && fixed > before
    });

    let reports = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &org,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
            "policyreports",
        ),
    );
    let report: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "e2e-web"},
        "scope": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": org},
        "results": [{"policy": "require-labels", "rule": "check-team", "result": "fail",
            "message": "label 'team' is required", "source": "kyverno"}]}))
    .unwrap();
    reports
        .create(&PostParams::default(), &report)
        .await
        .expect("create PolicyReport (is the wgpolicyk8s.io CRD installed?)");
    wait!("the failing report lowers the score", {
        status = env_status(&envs, &env_name).await;
        status["score"].as_f64().is_some_and(|s| s < fixed)
    });
    reports
        .delete("e2e-web", &DeleteParams::default())
        .await
        .expect("delete PolicyReport");
    wait!("the report's rows gone", {
        status = env_status(&envs, &env_name).await;
        status["score"]
            .as_f64()
            .is_some_and(|s| (s - fixed).abs() < 0.005)
    });
}
