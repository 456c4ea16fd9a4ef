//! `Environment` (catalyst.openova.io/v1): one stage (dev, staging, prod, …) of an Organization,
//! owning namespaces.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// An Environment of an Organization and the namespaces it owns. The tenancy controller labels
/// the namespaces with the `openova.io/*` vocabulary and generates their isolation policies and
/// role bindings; the compliance aggregator scores its applications.
#[expect(
    clippy::duplicated_attributes,
    reason = "printcolumn(...) entries repeat `type_ = \"string\"`, which clippy reads as a duplicated attribute"
)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "catalyst.openova.io",
    version = "v1",
    kind = "Environment",
    plural = "environments",
    shortname = "env",
    category = "catalyst",
    status = "EnvironmentStatus",
    doc = "An Environment of an Organization: the namespaces it owns, their isolation and access, and the EnvironmentPolicy that governs them.",
    printcolumn(
        name = "Organization",
        type_ = "string",
        json_path = ".spec.organization"
    ),
    printcolumn(name = "Env", type_ = "string", json_path = ".spec.name"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.namespaces"
    ),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.score"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The Organization (metadata.name) this Environment belongs to. Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.organization is immutable"))]
    pub organization: String,
    /// The Environment's name within its Organization: the `openova.io/environment` label value
    /// (e.g. `prod`). A DNS-1123 label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Region this Environment runs in (the `openova.io/region` label), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    /// The `EnvironmentPolicy` (metadata.name) that governs promotion rules and compliance weights.
    /// Default: Catalyst's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy: Option<String>,
    /// Namespaces owned by this Environment.
    #[serde(default)]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y.name == x.name))").message("spec.namespaces lists a namespace name twice"))]
    pub namespaces: Vec<EnvironmentNamespace>,
    /// What happens to the namespaces when they leave this Environment (removed from the list,
    /// or the Environment or Organization is deleted): `Retain` (default) keeps the namespace and
    /// its workloads and removes only what the controller generated (labels, policies, role
    /// bindings); `Delete` deletes the namespace.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// One namespace of an Environment.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.labels) || self.labels.all(k, !k.startsWith('openova.io/'))").message("labels may not set the openova.io/ vocabulary; the controller sets it"))]
pub struct EnvironmentNamespace {
    /// Namespace name. A DNS-1123 label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The Application deployed in it (the `openova.io/application` label), if the namespace
    /// holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
    )]
    pub application: Option<String>,
    /// Extra labels for the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What happens to a namespace that leaves its Environment.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the namespace; remove what the controller generated.
    #[default]
    Retain,
    /// Delete the namespace and everything in it.
    Delete,
}

/// What the controllers last observed and did for the Environment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// The metadata.generation last reconciled.
    #[serde(default)]
    pub observed_generation: i64,
    /// Namespaces owned.
    #[serde(default)]
    pub namespaces: u32,
    /// Compliance score 0–100 (set by the compliance aggregator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Applications with a compliance score under this resource (set by the compliance
    /// aggregator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<u32>,
    /// Workloads in those applications (set by the compliance aggregator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<u32>,
    /// Failing enforcing checks, `<environment>/<application>: <check>` (set by the compliance
    /// aggregator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_enforcing_checks: Vec<String>,
    /// The re-score gate (set by the compliance aggregator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<super::ComplianceGate>,
    /// `Ready` (tenancy applied), `Compliant` (re-score gate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
