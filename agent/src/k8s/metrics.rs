//! `catalyst_kubernetes_*`: what the Kubernetes source holds that an operator must see.

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

use crate::k8s::Inputs;

/// Gauges of the Kubernetes source.
#[derive(Clone, Default)]
pub struct KubernetesMetrics {
    policies: Gauge,
    rejected: Gauge,
    unresolved: Gauge,
    endpoints: Gauge,
}

impl KubernetesMetrics {
    /// Registers the gauges (the caller passes the `catalyst`-prefixed registry).
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self::default();
        registry.register(
            "kubernetes_policies",
            "Policy objects from the API in force",
            me.policies.clone(),
        );
        registry.register(
            "kubernetes_policies_rejected",
            "Policy objects from the API the parser rejects (logged with their name and reason)",
            me.rejected.clone(),
        );
        registry.register(
            "kubernetes_pods_without_interface",
            "Local pods whose host-side interface was not found yet (retried)",
            me.unresolved.clone(),
        );
        registry.register(
            "kubernetes_endpoints",
            "Local pods enforced as endpoints",
            me.endpoints.clone(),
        );
        me
    }

    /// Sets the gauges from the source's latest inputs.
    pub fn observe(&self, inputs: &Inputs) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.policies.set(n(inputs.policies.len()));
        self.rejected.set(n(inputs.rejected.len()));
        self.unresolved.set(n(inputs.unresolved.len()));
        self.endpoints.set(n(inputs.endpoints.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_the_inputs() {
        let mut registry = Registry::default();
        let m = KubernetesMetrics::register(registry.sub_registry_with_prefix("catalyst"));
        let mut inputs = Inputs::default();
        inputs.rejected.push(crate::k8s::Rejected {
            object: "CiliumNetworkPolicy a/b".into(),
            error: "x".into(),
            previous_in_force: false,
        });
        m.observe(&inputs);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("catalyst_kubernetes_policies_rejected 1"),
            "{out}"
        );
        assert!(out.contains("catalyst_kubernetes_endpoints 0"), "{out}");
    }
}
