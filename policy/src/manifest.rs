//! Parsing of policy manifests: `cilium.io/v2` `CiliumNetworkPolicy` and
//! `CiliumClusterwideNetworkPolicy` (`spec` and `specs`), and `networking.k8s.io/v1`
//! `NetworkPolicy`, from multi-document YAML. The Cilium schema is also accepted under Catalyst's
//! own CRD group, `policy.catalyst.openova.io/v1` `CatalystNetworkPolicy` and
//! `CatalystClusterwideNetworkPolicy` (clusters without Cilium's CRDs), with identical semantics.
//!
//! Unknown fields are rejected (operators mistype keys), fields of the Cilium schema that
//! Catalyst does not implement are rejected by name, and every error names the source, the
//! document (1-based), the field path and, when the YAML parser knows it, the line.
#![deny(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::labels::SOURCE_K8S;
use crate::ports::{IcmpFamily, L4Match, Port, PortError, Protocol, Scalar, port_match};
use crate::rule::{
    CidrSet, DefaultDeny, Entity, PeerRule, PeerSelector, Peers, Policy, PolicyKind, PolicyRef,
    Rule,
};
use crate::selector::{EndpointSelector, LabelSelectorSpec};

/// `apiVersion` of Catalyst's own policy CRDs (the Cilium rule schema under another group).
pub const CATALYST_API_VERSION: &str = "policy.catalyst.openova.io/v1";

/// Namespace of namespaced policies whose manifest has none (as `kubectl apply` would).
pub const DEFAULT_NAMESPACE: &str = "default";

/// An error in one manifest source.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// The YAML is malformed or a field is invalid.
    #[error("{source_name}: document {document}: {path}: {message}{}", at_line(*.line, *.column))]
    Field {
        /// Caller-provided source name (usually the file path).
        source_name: String,
        /// 1-based document index in the source.
        document: usize,
        /// Field path (`spec.ingress[0].toPorts[0].ports[1].port`), `.` for the document.
        path: String,
        /// What is wrong.
        message: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// The document is not a supported policy object.
    #[error(
        "{source_name}: document {document}: unsupported object apiVersion `{api_version}` kind \
         `{kind}` (supported: cilium.io/v2 CiliumNetworkPolicy, cilium.io/v2 \
         CiliumClusterwideNetworkPolicy, networking.k8s.io/v1 NetworkPolicy, \
         policy.catalyst.openova.io/v1 CatalystNetworkPolicy and CatalystClusterwideNetworkPolicy)"
    )]
    UnsupportedKind {
        /// Source name.
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
    },
}

fn at_line(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// Errors of loading a policy set.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// A manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A file could not be read.
    #[error("failed to read policy file `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Two documents define the same policy.
    #[error("{policy} is defined twice: in {first} and in {second}")]
    Duplicate {
        /// The policy.
        policy: PolicyRef,
        /// Where it was first defined.
        first: String,
        /// Where it was defined again.
        second: String,
    },
}

/// A validated set of policies, unique by [`PolicyRef`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every file (a directory: its `*.yaml`/`*.yml`/`*.json` files, sorted by name).
    /// Fails as a whole on the first invalid document; the error names file, document and field.
    pub fn load_files<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Self, PolicyError> {
        let mut set = Self::new();
        for p in paths {
            for file in policy_files(p.as_ref())? {
                let text = std::fs::read_to_string(&file).map_err(|source| PolicyError::Io {
                    path: file.clone(),
                    source,
                })?;
                set.extend(parse_manifests(&file.display().to_string(), &text)?)?;
            }
        }
        Ok(set)
    }

    /// Parses one multi-document YAML source named `source_name`.
    pub fn parse_str(source_name: &str, text: &str) -> Result<Self, PolicyError> {
        let mut set = Self::new();
        set.extend(parse_manifests(source_name, text)?)?;
        Ok(set)
    }

    /// Adds policies; a policy already in the set is an error.
    pub fn extend(
        &mut self,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Result<(), PolicyError> {
        let mut seen: std::collections::HashMap<PolicyRef, usize> = self
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.reference.clone(), i))
            .collect();
        for p in policies {
            if let Some(&i) = seen.get(&p.reference) {
                return Err(PolicyError::Duplicate {
                    policy: p.reference.clone(),
                    first: self.policies[i].origin.clone(),
                    second: p.origin,
                });
            }
            seen.insert(p.reference.clone(), self.policies.len());
            self.policies.push(p);
        }
        Ok(())
    }

    /// The policies, in load order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policies, in load order.
    pub fn into_policies(self) -> Vec<Policy> {
        self.policies
    }
}

/// The policy files `path` stands for: itself, or a directory's `*.yaml`/`*.yml`/`*.json`
/// files sorted by name (the order [`PolicySet::load_files`] reads them in).
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every document of a YAML source into policies. Empty documents are skipped.
pub fn parse_manifests(source_name: &str, text: &str) -> Result<Vec<Policy>, ManifestError> {
    // First pass: the header of every document decides the schema of the second pass.
    let mut headers = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let h: Option<Header> = deserialize_doc(doc, source_name, i + 1)?;
        headers.push(h);
    }
    let mut out = Vec::new();
    for (i, (doc, header)) in serde_norway::Deserializer::from_str(text)
        .zip(headers)
        .enumerate()
    {
        let document = i + 1;
        let Some(header) = header else { continue };
        let origin = format!("{source_name}: document {document}");
        let (api, kind) = (header.api_version.as_deref(), header.kind.as_deref());
        let policy = match (api, kind, cilium_schema_kind(api, kind)) {
            (_, _, Some(kind)) => {
                let m: CnpManifest = deserialize_doc(doc, source_name, document)?;
                m.into_policy(kind, origin)
                    .map_err(|e| e.into_manifest_error(source_name, document))?
            }
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy"), None) => {
                let m: NpManifest = deserialize_doc(doc, source_name, document)?;
                m.into_policy(origin)
            }
            (api, kind, _) => {
                return Err(ManifestError::UnsupportedKind {
                    source_name: source_name.to_owned(),
                    document,
                    api_version: api.unwrap_or("").to_owned(),
                    kind: kind.unwrap_or("").to_owned(),
                });
            }
        };
        out.push(policy);
    }
    Ok(out)
}

/// The kind of a document in the Cilium rule schema: Cilium's kinds and Catalyst's own.
fn cilium_schema_kind(api_version: Option<&str>, kind: Option<&str>) -> Option<PolicyKind> {
    Some(match (api_version?, kind?) {
        ("cilium.io/v2", "CiliumNetworkPolicy") => PolicyKind::CiliumNetworkPolicy,
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
            PolicyKind::CiliumClusterwideNetworkPolicy
        }
        (CATALYST_API_VERSION, "CatalystNetworkPolicy") => PolicyKind::CatalystNetworkPolicy,
        (CATALYST_API_VERSION, "CatalystClusterwideNetworkPolicy") => {
            PolicyKind::CatalystClusterwideNetworkPolicy
        }
        _ => return None,
    })
}

fn deserialize_doc<'de, T: Deserialize<'de>>(
    doc: serde_norway::Deserializer<'de>,
    source_name: &str,
    document: usize,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        let mut message = inner.to_string();
        if let Some(l) = &loc {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            if message.ends_with(&suffix) {
                message.truncate(message.len() - suffix.len());
            }
        }
        // serde_norway prefixes its own copy of the path (of the enclosing node).
        if let Some((head, _)) = message.split_once(": ")
            && !head.contains(' ')
            && path.starts_with(head)
        {
            message.drain(..head.len() + 2);
        }
        ManifestError::Field {
            source_name: source_name.to_owned(),
            document,
            path,
            message,
            line: loc.as_ref().map(serde_norway::Location::line),
            column: loc.as_ref().map(serde_norway::Location::column),
        }
    })
}

/// Errors found after deserialization (no line known).
struct LateError {
    path: String,
    message: String,
}

impl LateError {
    fn into_manifest_error(self, source_name: &str, document: usize) -> ManifestError {
        ManifestError::Field {
            source_name: source_name.to_owned(),
            document,
            path: self.path,
            message: self.message,
            line: None,
            column: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

/// `metadata`: only name and namespace matter; other fields (labels, uid, …) are ignored.
#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// A field of the Cilium schema that Catalyst does not implement: rejected by name.
struct Unsupported;

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Err(de::Error::custom("this field is not supported by Catalyst"))
    }
}

/// A CIDR as written: `a.b.c.d/n`, `a:b::/n` or a bare address (a host prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        t.parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(|n| Cidr(n.trunc()))
            .map_err(|_| de::Error::custom(format!("invalid CIDR \"{s}\"")))
    }
}

// ---------------------------------------------------------------------------------------------
// Cilium schema.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpManifest {
    #[expect(dead_code, reason = "read in the header pass")]
    api_version: String,
    #[expect(dead_code, reason = "read in the header pass")]
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Option<CnpRule>,
    #[serde(default)]
    specs: Option<Vec<CnpRule>>,
    #[serde(default)]
    #[expect(dead_code, reason = "status is written by controllers, ignored")]
    status: Option<IgnoredAny>,
}

#[expect(
    dead_code,
    reason = "`Unsupported` fields exist only to reject those keys by name"
)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CnpRule {
    #[serde(default)]
    endpoint_selector: Option<EndpointSelector>,
    #[serde(default)]
    node_selector: Option<Unsupported>,
    #[serde(default)]
    ingress: Vec<IngressSpec>,
    #[serde(default)]
    ingress_deny: Vec<IngressSpec>,
    #[serde(default)]
    egress: Vec<EgressSpec>,
    #[serde(default)]
    egress_deny: Vec<EgressSpec>,
    #[serde(default)]
    enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    #[expect(dead_code, reason = "free text")]
    description: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "rule labels are not used for attribution yet")]
    labels: Option<IgnoredAny>,
    #[serde(default)]
    log: Option<Unsupported>,
}

#[expect(
    dead_code,
    reason = "`Unsupported` fields exist only to reject those keys by name"
)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressSpec {
    #[serde(default)]
    from_endpoints: Vec<EndpointSelector>,
    #[serde(default, rename = "fromCIDR")]
    from_cidr: Vec<Cidr>,
    #[serde(default, rename = "fromCIDRSet")]
    from_cidr_set: Vec<CidrSetSpec>,
    #[serde(default)]
    from_entities: Vec<Entity>,
    #[serde(default)]
    to_ports: Vec<PortRuleSpec>,
    #[serde(default)]
    icmps: Vec<IcmpRuleSpec>,
    #[serde(default)]
    from_requires: Option<Unsupported>,
    #[serde(default)]
    from_nodes: Option<Unsupported>,
    #[serde(default)]
    from_groups: Option<Unsupported>,
    #[serde(default)]
    authentication: Option<Unsupported>,
}

#[expect(
    dead_code,
    reason = "`Unsupported` fields exist only to reject those keys by name"
)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressSpec {
    #[serde(default)]
    to_endpoints: Vec<EndpointSelector>,
    #[serde(default, rename = "toCIDR")]
    to_cidr: Vec<Cidr>,
    #[serde(default, rename = "toCIDRSet")]
    to_cidr_set: Vec<CidrSetSpec>,
    #[serde(default)]
    to_entities: Vec<Entity>,
    #[serde(default)]
    to_ports: Vec<PortRuleSpec>,
    #[serde(default)]
    icmps: Vec<IcmpRuleSpec>,
    #[serde(default)]
    to_requires: Option<Unsupported>,
    #[serde(default)]
    to_nodes: Option<Unsupported>,
    #[serde(default)]
    to_groups: Option<Unsupported>,
    #[serde(default, rename = "toFQDNs")]
    to_fqdns: Option<Unsupported>,
    #[serde(default)]
    to_services: Option<Unsupported>,
    #[serde(default)]
    authentication: Option<Unsupported>,
}

#[expect(
    dead_code,
    reason = "`Unsupported` fields exist only to reject those keys by name"
)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CidrSetSpec {
    cidr: Cidr,
    #[serde(default)]
    except: Vec<Cidr>,
    #[serde(default)]
    cidr_group_ref: Option<Unsupported>,
    #[serde(default)]
    cidr_group_selector: Option<Unsupported>,
}

#[expect(
    dead_code,
    reason = "`Unsupported` fields exist only to reject those keys by name"
)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortRuleSpec {
    #[serde(default)]
    ports: Vec<PortProtocolSpec>,
    #[serde(default)]
    rules: Option<Unsupported>,
    #[serde(default, rename = "terminatingTLS")]
    terminating_tls: Option<Unsupported>,
    #[serde(default, rename = "originatingTLS")]
    originating_tls: Option<Unsupported>,
    #[serde(default)]
    server_names: Option<Unsupported>,
    #[serde(default)]
    listener: Option<Unsupported>,
}

/// One `ports` element, validated as a whole (`endPort` against `port`).
#[derive(Deserialize)]
#[serde(try_from = "PortProtocolRaw")]
struct PortProtocolSpec(L4Match);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProtocolRaw {
    #[serde(default)]
    port: Option<Port>,
    #[serde(default)]
    end_port: Option<u32>,
    #[serde(default)]
    protocol: Option<Protocol>,
}

impl TryFrom<PortProtocolRaw> for PortProtocolSpec {
    type Error = PortError;

    fn try_from(r: PortProtocolRaw) -> Result<Self, Self::Error> {
        port_match(r.protocol.unwrap_or(Protocol::Any), r.port, r.end_port).map(Self)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRuleSpec {
    #[serde(default)]
    fields: Vec<IcmpFieldSpec>,
}

#[derive(Deserialize)]
#[serde(try_from = "IcmpFieldRaw")]
struct IcmpFieldSpec {
    icmp_type: u8,
    family: IcmpFamily,
}

/// `icmps[].fields[]` as written: `type` is a number or a CamelCase name of its family
/// (`EchoRequest`), resolved once the family is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpFieldRaw {
    #[serde(rename = "type")]
    icmp_type: Scalar,
    #[serde(default)]
    family: IcmpFamily,
}

impl TryFrom<IcmpFieldRaw> for IcmpFieldSpec {
    type Error = PortError;

    fn try_from(r: IcmpFieldRaw) -> Result<Self, Self::Error> {
        Ok(Self {
            icmp_type: r.family.icmp_type(&r.icmp_type)?,
            family: r.family,
        })
    }
}

fn l4_of(to_ports: &[PortRuleSpec], icmps: &[IcmpRuleSpec]) -> Option<Vec<L4Match>> {
    let mut l4: Vec<L4Match> = to_ports
        .iter()
        .flat_map(|p| p.ports.iter().map(|s| s.0))
        .collect();
    l4.extend(icmps.iter().flat_map(|i| {
        i.fields.iter().map(|f| L4Match::Icmp {
            family: f.family,
            icmp_type: f.icmp_type,
        })
    }));
    // A toPorts without ports (`toPorts: [{}]`) restricts nothing, as in Cilium.
    if l4.is_empty() { None } else { Some(l4) }
}

/// Peer selectors of one rule element; `Peers::Any` when it names no peer but has L4 matches.
fn peers_of(
    endpoints: &[EndpointSelector],
    cidrs: &[Cidr],
    cidr_sets: &[CidrSetSpec],
    entities: &[Entity],
    has_l4: bool,
    namespace: Option<&str>,
) -> Peers {
    let mut sels: Vec<PeerSelector> = Vec::new();
    for s in endpoints {
        let s = match namespace {
            _ if s.mentions_reserved() || s.mentions_namespace() => s.clone(),
            Some(ns) => s.clone().in_namespace(ns),
            // Cluster-wide `{}` means every endpoint of the cluster, not world.
            None if s.is_wildcard() => s.clone().in_any_namespace(),
            None => s.clone(),
        };
        sels.push(PeerSelector::Endpoints(s));
    }
    sels.extend(cidrs.iter().map(|c| {
        PeerSelector::Cidr(CidrSet {
            cidr: c.0,
            except: Vec::new(),
        })
    }));
    sels.extend(cidr_sets.iter().map(|c| {
        PeerSelector::Cidr(CidrSet {
            cidr: c.cidr.0,
            except: c.except.iter().map(|e| e.0).collect(),
        })
    }));
    sels.extend(entities.iter().map(|e| PeerSelector::Entity(*e)));
    if sels.is_empty() && has_l4 {
        Peers::Any
    } else {
        Peers::Selected(sels)
    }
}

impl IngressSpec {
    fn to_rule(&self, namespace: Option<&str>) -> PeerRule {
        let l4 = l4_of(&self.to_ports, &self.icmps);
        let peers = peers_of(
            &self.from_endpoints,
            &self.from_cidr,
            &self.from_cidr_set,
            &self.from_entities,
            l4.is_some(),
            namespace,
        );
        PeerRule { peers, l4 }
    }
}

impl EgressSpec {
    fn to_rule(&self, namespace: Option<&str>) -> PeerRule {
        let l4 = l4_of(&self.to_ports, &self.icmps);
        let peers = peers_of(
            &self.to_endpoints,
            &self.to_cidr,
            &self.to_cidr_set,
            &self.to_entities,
            l4.is_some(),
            namespace,
        );
        PeerRule { peers, l4 }
    }
}

impl CnpManifest {
    /// `kind` is one of the Cilium-schema kinds (Cilium's or Catalyst's, namespaced or not).
    fn into_policy(self, kind: PolicyKind, origin: String) -> Result<Policy, LateError> {
        let clusterwide = matches!(
            kind,
            PolicyKind::CiliumClusterwideNetworkPolicy
                | PolicyKind::CatalystClusterwideNetworkPolicy
        );
        let namespace = (!clusterwide).then(|| {
            self.metadata
                .namespace
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        });
        let specs: Vec<(String, CnpRule)> = match (self.spec, self.specs) {
            (None, None) => {
                return Err(LateError {
                    path: ".".into(),
                    message: "the policy has neither `spec` nor `specs`".into(),
                });
            }
            (spec, specs) => spec
                .into_iter()
                .map(|s| ("spec".to_owned(), s))
                .chain(
                    specs
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, s)| (format!("specs[{i}]"), s)),
                )
                .collect(),
        };
        let ns = namespace.as_deref();
        let mut rules = Vec::new();
        for (path, r) in specs {
            let Some(subject) = r.endpoint_selector else {
                return Err(LateError {
                    path,
                    message: "missing field `endpointSelector`".into(),
                });
            };
            let subject = match ns {
                Some(ns) => subject.in_namespace(ns),
                None => subject,
            };
            rules.push(Rule {
                subject,
                ingress: r.ingress.iter().map(|i| i.to_rule(ns)).collect(),
                ingress_deny: r.ingress_deny.iter().map(|i| i.to_rule(ns)).collect(),
                egress: r.egress.iter().map(|e| e.to_rule(ns)).collect(),
                egress_deny: r.egress_deny.iter().map(|e| e.to_rule(ns)).collect(),
                default_deny: r.enable_default_deny.unwrap_or_default(),
            });
        }
        Ok(Policy {
            reference: PolicyRef {
                kind,
                namespace,
                name: self.metadata.name,
            },
            origin,
            rules,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpManifest {
    #[expect(dead_code, reason = "read in the header pass")]
    api_version: String,
    #[expect(dead_code, reason = "read in the header pass")]
    kind: String,
    metadata: Metadata,
    spec: NpSpec,
    #[serde(default)]
    #[expect(dead_code, reason = "status is written by controllers, ignored")]
    status: Option<IgnoredAny>,
}

#[derive(Deserialize, PartialEq, Eq, Clone, Copy)]
enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpSpec {
    pod_selector: K8sSelector,
    #[serde(default)]
    policy_types: Option<Vec<PolicyType>>,
    #[serde(default)]
    ingress: Vec<NpIngress>,
    #[serde(default)]
    egress: Vec<NpEgress>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpIngress {
    #[serde(default)]
    from: Vec<NpPeer>,
    #[serde(default)]
    ports: Vec<NpPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpEgress {
    #[serde(default)]
    to: Vec<NpPeer>,
    #[serde(default)]
    ports: Vec<NpPort>,
}

/// A label selector whose keys default to the `k8s` source.
#[derive(Deserialize)]
#[serde(try_from = "LabelSelectorSpec")]
struct K8sSelector(EndpointSelector);

impl TryFrom<LabelSelectorSpec> for K8sSelector {
    type Error = crate::selector::SelectorError;

    fn try_from(s: LabelSelectorSpec) -> Result<Self, Self::Error> {
        EndpointSelector::from_spec(&s, SOURCE_K8S).map(K8sSelector)
    }
}

/// A `namespaceSelector`, over namespace labels.
#[derive(Deserialize)]
#[serde(try_from = "LabelSelectorSpec")]
struct NamespaceSelector(EndpointSelector);

impl TryFrom<LabelSelectorSpec> for NamespaceSelector {
    type Error = crate::selector::SelectorError;

    fn try_from(s: LabelSelectorSpec) -> Result<Self, Self::Error> {
        EndpointSelector::namespace_selector(&s).map(NamespaceSelector)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "NpPeerRaw")]
struct NpPeer(NpPeerRaw);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpPeerRaw {
    #[serde(default)]
    pod_selector: Option<K8sSelector>,
    #[serde(default)]
    namespace_selector: Option<NamespaceSelector>,
    #[serde(default)]
    ip_block: Option<IpBlock>,
}

impl TryFrom<NpPeerRaw> for NpPeer {
    type Error = String;

    fn try_from(r: NpPeerRaw) -> Result<Self, Self::Error> {
        let selectors = r.pod_selector.is_some() || r.namespace_selector.is_some();
        match (selectors, r.ip_block.is_some()) {
            (true, true) => {
                Err("ipBlock cannot be combined with podSelector or namespaceSelector".into())
            }
            (false, false) => Err("a peer needs podSelector, namespaceSelector or ipBlock".into()),
            _ => Ok(Self(r)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBlock {
    cidr: Cidr,
    #[serde(default)]
    except: Vec<Cidr>,
}

#[derive(Deserialize)]
#[serde(try_from = "NpPortRaw")]
struct NpPort(L4Match);

#[derive(Deserialize, Clone, Copy)]
enum NpProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NpPortRaw {
    #[serde(default)]
    protocol: Option<NpProtocol>,
    #[serde(default)]
    port: Option<Port>,
    #[serde(default)]
    end_port: Option<u32>,
}

impl TryFrom<NpPortRaw> for NpPort {
    type Error = PortError;

    fn try_from(r: NpPortRaw) -> Result<Self, Self::Error> {
        let protocol = match r.protocol.unwrap_or(NpProtocol::Tcp) {
            NpProtocol::Tcp => Protocol::Tcp,
            NpProtocol::Udp => Protocol::Udp,
            NpProtocol::Sctp => Protocol::Sctp,
        };
        port_match(protocol, r.port, r.end_port).map(Self)
    }
}

fn np_peers(peers: &[NpPeer], namespace: &str) -> Peers {
    if peers.is_empty() {
        return Peers::Any;
    }
    Peers::Selected(
        peers
            .iter()
            .map(
                |NpPeer(p)| match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
                    (_, _, Some(b)) => PeerSelector::Cidr(CidrSet {
                        cidr: b.cidr.0,
                        except: b.except.iter().map(|e| e.0).collect(),
                    }),
                    (Some(pod), None, None) => {
                        PeerSelector::Endpoints(pod.0.clone().in_namespace(namespace))
                    }
                    (pod, Some(ns), None) => PeerSelector::Endpoints(match pod {
                        Some(pod) => ns.0.clone().and(&pod.0),
                        None => ns.0.clone(),
                    }),
                    (None, None, None) => unreachable!("validated by NpPeer::try_from"),
                },
            )
            .collect(),
    )
}

fn np_l4(ports: &[NpPort]) -> Option<Vec<L4Match>> {
    if ports.is_empty() {
        None
    } else {
        Some(ports.iter().map(|p| p.0).collect())
    }
}

impl NpManifest {
    fn into_policy(self, origin: String) -> Policy {
        let ns = self
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let spec = self.spec;
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec![PolicyType::Ingress];
            if !spec.egress.is_empty() {
                t.push(PolicyType::Egress);
            }
            t
        });
        let ingress_on = types.contains(&PolicyType::Ingress);
        let egress_on = types.contains(&PolicyType::Egress);
        let ingress = if ingress_on {
            spec.ingress
                .iter()
                .map(|r| PeerRule {
                    peers: np_peers(&r.from, &ns),
                    l4: np_l4(&r.ports),
                })
                .collect()
        } else {
            Vec::new()
        };
        let egress = if egress_on {
            spec.egress
                .iter()
                .map(|r| PeerRule {
                    peers: np_peers(&r.to, &ns),
                    l4: np_l4(&r.ports),
                })
                .collect()
        } else {
            Vec::new()
        };
        let rule = Rule {
            subject: spec.pod_selector.0.in_namespace(&ns),
            ingress,
            ingress_deny: Vec::new(),
            egress,
            egress_deny: Vec::new(),
            default_deny: DefaultDeny {
                ingress: Some(ingress_on),
                egress: Some(egress_on),
            },
        };
        Policy {
            reference: PolicyRef {
                kind: PolicyKind::NetworkPolicy,
                namespace: Some(ns),
                name: self.metadata.name,
            },
            origin,
            rules: vec![rule],
        }
    }
}

impl fmt::Display for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by_kind: BTreeMap<PolicyKind, usize> =
            self.policies.iter().fold(BTreeMap::new(), |mut m, p| {
                *m.entry(p.reference.kind).or_default() += 1;
                m
            });
        let parts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        write!(f, "{} policies ({})", self.policies.len(), parts.join(", "))
    }
}

#[cfg(test)]
mod tests;
