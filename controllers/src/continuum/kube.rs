//! The Kubernetes side of Continuum (`continuum run --kube`): the `CloudNativePG` driver, the
//! `HTTPRoute` weight steps and the Continuum's status, through the API server.
//!
//! **`CloudNativePG`** (distributed topology, `postgresql.cnpg.io/v1` `Cluster`): every region's
//! Cluster names the designated primary cluster in `spec.replica.primary`. A controlled
//! switchover demotes the old primary's Cluster by pointing its `spec.replica.primary` at the
//! target (CNPG shuts the primary down cleanly and publishes `status.demotionToken`), then
//! promotes the target by setting the same `spec.replica.primary` there together with
//! `spec.replica.promotionToken` = that token. After losing the primary region there is no
//! token: the target is promoted without one. Cluster names in `spec.replica.primary` are the
//! Clusters' `metadata.name`s (the names their `externalClusters` entries use).
//!
//! **`HTTPRoute`** (`gateway.networking.k8s.io/v1`): draining a region sets every backend weight
//! of its routes to 0 in steps over `spec.switchover.drainSeconds`, keeping the original
//! weights in the annotation `dr.openova.io/weights`; restoring puts them back (weight 1, the
//! Gateway API default, when a route was never drained) and removes the annotation.
//!
//! The pure parts (views and patches) are functions of JSON; the async parts only fetch and
//! apply them (JSON merge patches, one field manager).

use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};
use tracing::info;

use super::machine::RegionView;
use crate::crd::{Continuum, ContinuumStatus};

/// Field manager of every write.
pub const MANAGER: &str = "catalyst-controllers-continuum";
/// Annotation keeping a drained route's original weights (JSON: one array per rule).
pub const WEIGHTS_ANNOTATION: &str = "dr.openova.io/weights";

fn cnpg_cluster() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster"),
        "clusters",
    )
}

fn http_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Splits `namespace/name`.
pub fn split_ref(r: &str) -> anyhow::Result<(&str, &str)> {
    match r.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => bail!("`{r}` is not namespace/name"),
    }
}

/// What a `CloudNativePG` Cluster object says of its region: up when at least one instance is
/// ready; a standby when it designates another cluster as primary.
pub fn cnpg_view(obj: &Value) -> RegionView {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ready = obj["status"]["readyInstances"].as_u64().unwrap_or(0);
    let replica = &obj["spec"]["replica"];
    let designated = replica["primary"].as_str();
    let standby = match designated {
        Some(p) => p != replica["self"].as_str().unwrap_or(name),
        None => replica["enabled"].as_bool().unwrap_or(false),
    };
    RegionView {
        up: ready >= 1,
        standby: Some(standby),
        lag_bytes: None,
    }
}

/// The merge patch that makes a Cluster follow `primary` (demotion when it is another cluster).
pub fn demote_patch(primary: &str) -> Value {
    json!({"spec": {"replica": {"primary": primary}}})
}

/// The merge patch that makes `primary` the designated primary, with the demotion token of a
/// controlled switchover (none after losing the old primary).
pub fn promote_patch(primary: &str, token: Option<&str>) -> Value {
    match token {
        Some(t) => json!({"spec": {"replica": {"primary": primary, "promotionToken": t}}}),
        None => json!({"spec": {"replica": {"primary": primary}}}),
    }
}

fn weights(route: &Value) -> Vec<Vec<i64>> {
    route["spec"]["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    r["backendRefs"]
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .map(|x| x["weight"].as_i64().unwrap_or(1))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn with_weights(route: &Value, w: &[Vec<i64>]) -> Value {
    let mut rules = route["spec"]["rules"].clone();
    if let Some(rs) = rules.as_array_mut() {
        for (ri, r) in rs.iter_mut().enumerate() {
            if let Some(bs) = r["backendRefs"].as_array_mut() {
                for (bi, b) in bs.iter_mut().enumerate() {
                    let v = w.get(ri).and_then(|x| x.get(bi)).copied().unwrap_or(1);
                    b["weight"] = json!(v);
                }
            }
        }
    }
    rules
}

/// The merge patch for drain step `k` of `steps` (weights × (steps − k) / steps; 0 at the last
/// step), recording the original weights the first time.
pub fn drain_patch(route: &Value, k: u32, steps: u32) -> anyhow::Result<Value> {
    let steps = steps.max(1);
    let kept = route["metadata"]["annotations"][WEIGHTS_ANNOTATION]
        .as_str()
        .map(serde_json::from_str::<Vec<Vec<i64>>>)
        .transpose()
        .context("annotation dr.openova.io/weights is not a JSON array of arrays")?;
    let original = kept.clone().unwrap_or_else(|| weights(route));
    let scaled: Vec<Vec<i64>> = original
        .iter()
        .map(|r| {
            r.iter()
                .map(|w| w * i64::from(steps - k.min(steps)) / i64::from(steps))
                .collect()
        })
        .collect();
    let mut patch = json!({"spec": {"rules": with_weights(route, &scaled)}});
    if kept.is_none() {
        patch["metadata"] =
            json!({"annotations": {WEIGHTS_ANNOTATION: serde_json::to_string(&original)?}});
    }
    Ok(patch)
}

/// The merge patch restoring a route's original weights and removing the annotation.
pub fn restore_patch(route: &Value) -> anyhow::Result<Value> {
    let kept = route["metadata"]["annotations"][WEIGHTS_ANNOTATION]
        .as_str()
        .map(serde_json::from_str::<Vec<Vec<i64>>>)
        .transpose()
        .context("annotation dr.openova.io/weights is not a JSON array of arrays")?;
    let w = kept.unwrap_or_else(|| {
        weights(route)
            .iter()
            .map(|r| r.iter().map(|_| 1).collect())
            .collect()
    });
    Ok(json!({
        "metadata": {"annotations": {WEIGHTS_ANNOTATION: null}},
        "spec": {"rules": with_weights(route, &w)},
    }))
}

/// The API server, for the Kubernetes side of one Continuum.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    last_status: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").finish_non_exhaustive()
    }
}

impl Kube {
    /// From a client (in-cluster or KUBECONFIG: [`Kube::infer`]).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            last_status: std::sync::Arc::default(),
        }
    }

    /// In-cluster configuration, else `KUBECONFIG` / `~/.kube/config`.
    pub async fn infer() -> anyhow::Result<Self> {
        Ok(Self::new(Client::try_default().await.context(
            "cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)",
        )?))
    }

    fn api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    async fn get(&self, ar: &ApiResource, r: &str) -> anyhow::Result<Value> {
        let (ns, name) = split_ref(r)?;
        let o = self
            .api(ar, ns)
            .get(name)
            .await
            .with_context(|| format!("cannot read {} {r}", ar.kind))?;
        Ok(serde_json::to_value(o)?)
    }

    async fn merge(&self, ar: &ApiResource, r: &str, patch: &Value) -> anyhow::Result<Value> {
        let (ns, name) = split_ref(r)?;
        let o = self
            .api(ar, ns)
            .patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(patch))
            .await
            .with_context(|| format!("cannot patch {} {r}", ar.kind))?;
        Ok(serde_json::to_value(o)?)
    }

    /// The region view of a `CloudNativePG` Cluster (`namespace/name`); down when it cannot be
    /// read.
    pub async fn cnpg_probe(&self, cluster: &str) -> RegionView {
        match self.get(&cnpg_cluster(), cluster).await {
            Ok(o) => cnpg_view(&o),
            Err(_) => RegionView::default(),
        }
    }

    /// Demote `from` (`namespace/name`) in favour of `to` and wait (at most `wait`) for its
    /// demotion token.
    pub async fn cnpg_demote(
        &self,
        from: &str,
        to: &str,
        wait: Duration,
    ) -> anyhow::Result<String> {
        let (_, to_name) = split_ref(to)?;
        self.merge(&cnpg_cluster(), from, &demote_patch(to_name))
            .await?;
        let t0 = std::time::Instant::now();
        loop {
            let o = self.get(&cnpg_cluster(), from).await?;
            if let Some(t) = o["status"]["demotionToken"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                info!(cluster = from, "demoted; demotion token published");
                return Ok(t.to_owned());
            }
            if t0.elapsed() > wait {
                bail!("Cluster {from} published no status.demotionToken within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Promote `to` (`namespace/name`), with the demotion token of a controlled switchover.
    pub async fn cnpg_promote(&self, to: &str, token: Option<&str>) -> anyhow::Result<()> {
        let (_, name) = split_ref(to)?;
        self.merge(&cnpg_cluster(), to, &promote_patch(name, token))
            .await?;
        info!(
            cluster = to,
            with_token = token.is_some(),
            "promotion requested"
        );
        Ok(())
    }

    /// Drain `routes` (`namespace/name` each) to weight 0 in steps over `over`.
    pub async fn drain(&self, routes: &[String], over: Duration) -> anyhow::Result<()> {
        if routes.is_empty() {
            return Ok(());
        }
        let steps = u32::try_from(over.as_secs().clamp(1, 5)).unwrap_or(5);
        for k in 1..=steps {
            for r in routes {
                let o = self.get(&http_route(), r).await?;
                self.merge(&http_route(), r, &drain_patch(&o, k, steps)?)
                    .await?;
            }
            if k < steps {
                tokio::time::sleep(over / steps).await;
            }
        }
        Ok(())
    }

    /// Restore the original weights of `routes`.
    pub async fn restore(&self, routes: &[String]) -> anyhow::Result<()> {
        for r in routes {
            let o = self.get(&http_route(), r).await?;
            self.merge(&http_route(), r, &restore_patch(&o)?).await?;
        }
        Ok(())
    }

    /// Write the Continuum's status (a status merge patch), only when it changed since the
    /// last write of this process.
    pub async fn write_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ContinuumStatus,
    ) -> anyhow::Result<bool> {
        let body = json!({"status": status});
        if self
            .last_status
            .lock()
            .map_err(|_| anyhow::anyhow!("status cache poisoned"))?
            .as_ref()
            == Some(&body)
        {
            return Ok(false);
        }
        let api: Api<Continuum> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(name, &PatchParams::apply(MANAGER), &Patch::Merge(&body))
            .await
            .with_context(|| format!("cannot write the status of Continuum {namespace}/{name}"))?;
        *self
            .last_status
            .lock()
            .map_err(|_| anyhow::anyhow!("status cache poisoned"))? = Some(body);
        Ok(true)
    }
}
