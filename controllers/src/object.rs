//! Generated Kubernetes objects and the plan that brings observed objects to them. Pure: the kube
//! shell and the standalone file writer both execute a [`Plan`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// `app.kubernetes.io/managed-by` value on every generated object.
pub const MANAGER: &str = "catalyst-controllers";
/// Label naming the controller-side owner (the Organization whose reconcile produced the object).
pub const OWNER_LABEL: &str = "catalyst.openova.io/owner";
/// Label naming which controller generated the object.
pub const CONTROLLER_LABEL: &str = "catalyst.openova.io/controller";
/// The standard managed-by label.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation on namespaces: what to do when the namespace leaves its Environment.
pub const DELETION_POLICY_ANNOTATION: &str = "catalyst.openova.io/deletion-policy";

/// Identity of an object: API version, kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `group/version` or `v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace (None for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.kind, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// An owner reference (only emitted when the owner's UID is known: Kubernetes mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Owner API version.
    pub api_version: String,
    /// Owner kind.
    pub kind: String,
    /// Owner name.
    pub name: String,
    /// Owner UID.
    pub uid: String,
}

/// One object the controllers want to exist.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Identity.
    pub key: ObjectKey,
    /// Labels (ours; other labels on the live object are left alone).
    pub labels: BTreeMap<String, String>,
    /// Annotations (ours).
    pub annotations: BTreeMap<String, String>,
    /// Owner reference for garbage collection.
    pub owner: Option<Owner>,
    /// Top-level fields besides apiVersion/kind/metadata (`spec`, `subjects`, `roleRef`, …), all
    /// owned by the controller: a live value that differs is drift.
    pub body: Map<String, Value>,
}

impl Generated {
    /// The full manifest (what server-side apply sends and what standalone mode writes).
    pub fn manifest(&self) -> Value {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(self.key.name));
        if let Some(ns) = &self.key.namespace {
            metadata.insert("namespace".into(), json!(ns));
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(o) = &self.owner {
            metadata.insert(
                "ownerReferences".into(),
                json!([{
                    "apiVersion": o.api_version,
                    "kind": o.kind,
                    "name": o.name,
                    "uid": o.uid,
                    "blockOwnerDeletion": true,
                }]),
            );
        }
        let mut obj = Map::new();
        obj.insert("apiVersion".into(), json!(self.key.api_version));
        obj.insert("kind".into(), json!(self.key.kind));
        obj.insert("metadata".into(), Value::Object(metadata));
        for (k, v) in &self.body {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }

    /// Whether the live object already carries everything this one sets. Fields of others
    /// (extra labels, status, defaults the server filled) are not compared.
    pub fn drift(&self, live: &Value) -> Option<String> {
        let meta = &live["metadata"];
        for (k, v) in &self.labels {
            if meta["labels"][k].as_str() != Some(v) {
                return Some(format!(
                    "label {k} is {} (want {v})",
                    show(&meta["labels"][k])
                ));
            }
        }
        for (k, v) in &self.annotations {
            if meta["annotations"][k].as_str() != Some(v) {
                return Some(format!(
                    "annotation {k} is {} (want {v})",
                    show(&meta["annotations"][k])
                ));
            }
        }
        if let Some(o) = &self.owner {
            let refs = meta["ownerReferences"].as_array();
            if !refs.is_some_and(|r| r.iter().any(|r| r["uid"].as_str() == Some(&o.uid))) {
                return Some(format!(
                    "owner reference to {} {} is missing",
                    o.kind, o.name
                ));
            }
        }
        for (k, v) in &self.body {
            if !subset(v, &live[k]) {
                return Some(format!("{k} differs"));
            }
        }
        None
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `want` ⊆ `have`: objects compare key by key (the server may add defaulted fields), arrays
/// and scalars exactly.
fn subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| {
            h.get(k).is_some_and(|hv| subset(v, hv)) || is_empty(v) && h.get(k).is_none()
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// What to do with a generated object that is no longer wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneAction {
    /// Delete it.
    Delete,
    /// A namespace with `Retain`: keep it and its workloads, remove the controller's labels and
    /// annotations (server-side apply of an empty object with the controller's field manager).
    Release,
}

/// The steps that turn the observed objects into the desired ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Objects that do not exist yet.
    pub create: Vec<Generated>,
    /// Objects that exist but differ (changed by someone else, or a new desired version), with
    /// what differs.
    pub update: Vec<(Generated, String)>,
    /// Objects the controller generated earlier that are no longer wanted.
    pub prune: Vec<(ObjectKey, PruneAction)>,
    /// Objects already as desired.
    pub unchanged: usize,
}

impl Plan {
    /// Whether the plan writes anything.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.prune.is_empty()
    }

    /// Number of writes.
    pub fn writes(&self) -> usize {
        self.create.len() + self.update.len() + self.prune.len()
    }
}

/// Key of a live object.
pub fn key_of(live: &Value) -> Option<ObjectKey> {
    Some(ObjectKey {
        api_version: live["apiVersion"].as_str()?.to_owned(),
        kind: live["kind"].as_str()?.to_owned(),
        namespace: live["metadata"]["namespace"].as_str().map(str::to_owned),
        name: live["metadata"]["name"].as_str()?.to_owned(),
    })
}

/// Plans `desired` against `observed`: the live objects this owner generated earlier (selected
/// by [`OWNER_LABEL`]) plus any live objects with the desired keys (which may have been created
/// by someone else, or lost our labels).
pub fn plan(desired: &[Generated], observed: &[Value]) -> Plan {
    let live: BTreeMap<ObjectKey, &Value> = observed
        .iter()
        .filter_map(|o| Some((key_of(o)?, o)))
        .collect();
    let wanted: BTreeSet<&ObjectKey> = desired.iter().map(|g| &g.key).collect();
    let mut out = Plan::default();
    for g in desired {
        match live.get(&g.key) {
            None => out.create.push(g.clone()),
            Some(l) => match g.drift(l) {
                Some(why) => out.update.push((g.clone(), why)),
                None => out.unchanged += 1,
            },
        }
    }
    for (key, l) in &live {
        if wanted.contains(key)
            || l["metadata"]["labels"][MANAGED_BY_LABEL].as_str() != Some(MANAGER)
        {
            continue;
        }
        let action = if key.kind == "Namespace"
            && l["metadata"]["annotations"][DELETION_POLICY_ANNOTATION].as_str() != Some("Delete")
        {
            PruneAction::Release
        } else {
            PruneAction::Delete
        };
        out.prune.push((key.clone(), action));
    }
    out
}
