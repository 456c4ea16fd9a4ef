//! End to end on a real cluster (not run in CI: there is no API server on the build machines).
//!
//! Preconditions: a cluster with a veth-based CNI, the catalyst chart installed
//! (`helm install catalyst deploy/helm/catalyst -n catalyst-system --create-namespace`) and its
//! agent `DaemonSet` ready, Catalyst's CRDs installed (the chart's `crds/`). Run:
//!
//! ```sh
//! CATALYST_E2E_KUBECONFIG=~/.kube/config cargo test -p catalyst-agent --test k8s_e2e -- --ignored
//! ```
//!
//! The test creates namespace `catalyst-e2e-<pid>` with a server pod and two client Jobs (one
//! labelled as the allowed peer, one not), applies a `CatalystNetworkPolicy` allowing only the
//! first, and checks that the allowed Job connects and the other one times out; the namespace is
//! deleted at the end. Images: `CATALYST_E2E_AGNHOST` (default
//! `registry.k8s.io/e2e-test-images/agnhost:2.53`).

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Namespace, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
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

async fn wait_pod_ip(pods: &Api<Pod>, name: &str) -> String {
    for _ in 0..120 {
        if let Ok(p) = pods.get(name).await
            && let Some(ip) = p.status.and_then(|s| s.pod_ip)
            && !ip.is_empty()
        {
            return ip;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("pod {name} got no IP");
}

/// Runs a Job that connects to `target` from a pod labelled `app`; true when it connected.
async fn connects(jobs: &Api<Job>, name: &str, app: &str, target: &str) -> bool {
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"app": app}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": agnhost(),
                "args": ["connect", target, "--timeout=5s"]}]}}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    for _ in 0..120 {
        let j = jobs.get(name).await.expect("get job");
        let s = j.status.unwrap_or_default();
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

#[tokio::test]
#[ignore = "needs a real cluster: set CATALYST_E2E_KUBECONFIG and run with --ignored (docs/testing.md)"]
async fn e2e_catalyst_policy_allows_only_the_selected_client() {
    let Some(client) = client().await else {
        panic!("set CATALYST_E2E_KUBECONFIG to a cluster with the catalyst chart installed");
    };
    let ns = format!("catalyst-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("create namespace");
    let result = tokio::spawn(scenario(client.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(client: Client, ns: String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let server: Pod = serde_json::from_value(json!({
        "metadata": {"name": "server", "labels": {"app": "server"}},
        "spec": {"containers": [{"name": "c", "image": agnhost(),
            "args": ["netexec", "--http-port=8080"],
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &server)
        .await
        .expect("create server");
    let ip = wait_pod_ip(&pods, "server").await;
    let target = format!("{ip}:8080");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(
        connects(&jobs, "before-other", "other", &target).await,
        "without a policy everything connects"
    );

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy.catalyst.openova.io", "v1", "CatalystNetworkPolicy"),
        "catalystnetworkpolicies",
    );
    let policies: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy.catalyst.openova.io/v1", "kind": "CatalystNetworkPolicy",
        "metadata": {"name": "server-from-fe"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
                              "toPorts": [{"ports": [{"port": "http"}]}]}]}
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");
    // The bar is 100 ms from event to maps; give the whole cluster a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        connects(&jobs, "allowed-fe", "fe", &target).await,
        "fe is allowed"
    );
    assert!(
        !connects(&jobs, "denied-other", "other", &target).await,
        "other is denied"
    );
}
