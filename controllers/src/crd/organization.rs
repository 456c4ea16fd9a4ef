//! `Organization` (orgs.openova.io/v1): a tenant of the platform.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// An Organization: a tenant whose Environments' namespaces are isolated from every other
/// Organization (default deny, explicit deny of other tenants, allow templates) and whose groups
/// get Catalyst's access tiers in those namespaces.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orgs.openova.io",
    version = "v1",
    kind = "Organization",
    plural = "organizations",
    shortname = "org",
    category = "catalyst",
    status = "OrganizationStatus",
    doc = "A tenant of the Catalyst platform. Its Environments' namespaces are isolated from other Organizations.",
    printcolumn(name = "Sovereign", type_ = "string", json_path = ".spec.sovereign"),
    printcolumn(name = "Environments", type_ = "integer", json_path = ".status.environments"),
    printcolumn(name = "Namespaces", type_ = "integer", json_path = ".status.namespaces"),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.score"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.spec.grants) || self.spec.grants.all(g, g.from.organization != self.metadata.name)").message("spec.grants[].from.organization must name another Organization (traffic within an Organization is always allowed)").field_path(".spec.grants"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters (it becomes the openova.io/organization label value)"),
)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationSpec {
    /// Name shown in dashboards and reports. Default: metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The Sovereign (top of the Catalyst hierarchy: Sovereign → Organization → Environment →
    /// Application) this Organization belongs to; the `openova.io/sovereign` label of its
    /// namespaces. A DNS-1123 label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.sovereign is immutable"))]
    pub sovereign: String,
    /// Groups (as the API server's authenticator names them) bound to Catalyst's access tiers
    /// in every namespace of the Organization.
    #[serde(default)]
    pub access: AccessTiers,
    /// Explicit cross-Organization grants: traffic from another Organization's workloads into
    /// this one's, on the listed ports only. Declared by the receiving Organization; the
    /// controller opens the matching ingress here and egress in the sending Organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub grants: Vec<Grant>,
}

/// Groups per access tier. Each tier is a `ClusterRole` (`catalyst:<tier>`, shipped with the Helm
/// chart) bound by a `RoleBinding` in every namespace of the Organization.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessTiers {
    /// Read-only access to workloads, events and logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.access.viewer lists a group twice"))]
    pub viewer: Vec<String>,
    /// Viewer plus create/update of workloads and configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.access.developer lists a group twice"))]
    pub developer: Vec<String>,
    /// Developer plus operational actions (scale, restart, exec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.access.operator lists a group twice"))]
    pub operator: Vec<String>,
    /// Full control of the namespace's resources, except RBAC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.access.admin lists a group twice"))]
    pub admin: Vec<String>,
    /// Admin plus RBAC within the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, y == x))").message("spec.access.owner lists a group twice"))]
    pub owner: Vec<String>,
}

impl AccessTiers {
    /// `(tier, groups)` in a stable order.
    pub fn tiers(&self) -> [(&'static str, &[String]); 5] {
        [
            ("viewer", &self.viewer),
            ("developer", &self.developer),
            ("operator", &self.operator),
            ("admin", &self.admin),
            ("owner", &self.owner),
        ]
    }
}

/// Traffic another Organization may send into this one.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Why the grant exists (shown in the generated policy's description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The sending workloads.
    pub from: GrantPeer,
    /// The receiving workloads of this Organization. Default: all of them.
    #[serde(default)]
    pub to: GrantTarget,
    /// The ports opened (at least one).
    #[schemars(length(min = 1, max = 64))]
    pub ports: Vec<GrantPort>,
}

/// The sending side of a grant.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantPeer {
    /// The other Organization (metadata.name).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub organization: String,
    /// Only this Environment of it (its `openova.io/environment` label value). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub environment: Option<String>,
    /// Only this Application of it (`openova.io/application`). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub application: Option<String>,
}

/// The receiving side of a grant, within this Organization.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrantTarget {
    /// Only this Environment (its `openova.io/environment` label value). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub environment: Option<String>,
    /// Only this Application (`openova.io/application`). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub application: Option<String>,
}

/// A port or port range of a grant.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endPort) || self.endPort >= self.port").message("endPort must be greater than or equal to port"))]
pub struct GrantPort {
    /// Port number (1–65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Last port of a range (inclusive). Default: only `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<u16>,
    /// `TCP`, `UDP` or `SCTP`. Default `TCP`.
    #[serde(default)]
    pub protocol: GrantProtocol,
}

/// Transport protocol of a grant port.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GrantProtocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl GrantProtocol {
    /// Cilium's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// What the tenancy controller last did for the Organization.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationStatus {
    /// The metadata.generation last reconciled.
    #[serde(default)]
    pub observed_generation: i64,
    /// Environments that name this Organization.
    #[serde(default)]
    pub environments: u32,
    /// Namespaces owned through those Environments.
    #[serde(default)]
    pub namespaces: u32,
    /// Objects generated (namespaces, policies, role bindings).
    #[serde(default)]
    pub generated_objects: u32,
    /// Compliance score 0–100, the workload-weighted mean of the Organization's applications
    /// (set by the compliance aggregator).
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
    /// `Ready`: every generated object is applied; `Compliant`: no enforcing check fails
    /// (compliance aggregator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
