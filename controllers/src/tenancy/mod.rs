//! Tenancy: an Organization and its Environments → labelled namespaces, Cilium policies
//! (default-deny baseline, allow templates, cross-Organization grants) and tier role bindings.
//!
//! [`desired`] is the pure core; [`kube`] runs it against the API server and
//! [`crate::standalone`] against files.

pub mod kube;
mod render;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use self::render::{APPLICATION, ENVIRONMENT, ORGANIZATION, REGION, SOVEREIGN, World, desired};

/// Settings of the tenancy controller (the `tenancy:` section of the controllers' config).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct TenancyConfig {
    /// Whether the tenancy controller runs. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The DNS allow template.
    #[serde(default)]
    pub dns: DnsTemplate,
    /// The monitoring (scrape) allow template.
    #[serde(default)]
    pub monitoring: MonitoringTemplate,
    /// Prefix of the `ClusterRoles` bound per tier (`<prefix><tier>`). Default `catalyst:`.
    #[serde(default = "role_prefix")]
    pub cluster_role_prefix: String,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dns: DnsTemplate::default(),
            monitoring: MonitoringTemplate::default(),
            cluster_role_prefix: role_prefix(),
        }
    }
}

/// Egress to the cluster resolver.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsTemplate {
    /// Whether tenant namespaces get the DNS allow policy. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Namespace of the resolver pods. Default `kube-system`.
    #[serde(default = "kube_system")]
    pub namespace: String,
    /// Labels of the resolver pods. Default `k8s-app: kube-dns`.
    #[serde(default = "kube_dns")]
    pub pod_labels: BTreeMap<String, String>,
    /// Port (UDP and TCP). Default 53.
    #[serde(default = "dns_port")]
    pub port: u16,
}

impl Default for DnsTemplate {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: kube_system(),
            pod_labels: kube_dns(),
            port: dns_port(),
        }
    }
}

/// Ingress from the monitoring stack.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MonitoringTemplate {
    /// Whether tenant namespaces get the scrape allow policy. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Namespace of the scrapers. Default `monitoring`.
    #[serde(default = "monitoring")]
    pub namespace: String,
    /// Labels of the scraper pods (empty: every pod of the namespace). Default empty.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// TCP ports scraped (empty: any port). Default empty.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl Default for MonitoringTemplate {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: monitoring(),
            pod_labels: BTreeMap::new(),
            ports: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn role_prefix() -> String {
    "catalyst:".into()
}
fn kube_system() -> String {
    "kube-system".into()
}
fn kube_dns() -> BTreeMap<String, String> {
    BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])
}
fn dns_port() -> u16 {
    53
}
fn monitoring() -> String {
    "monitoring".into()
}

#[cfg(test)]
mod tests;
