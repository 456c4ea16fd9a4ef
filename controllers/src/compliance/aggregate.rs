//! The aggregator's state: rows in, `catalyst.score/v1` documents out, per level, recomputing
//! only the applications whose rows changed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kube::ResourceExt as _;
use serde::Serialize;

use super::{
    checks::Catalog,
    config::{AppWeighting, ComplianceConfig},
    row::{AppKey, Row, RowStore, Source, token},
    score::{self, AppScore, CheckScore, FixList, GateState},
};
use crate::crd::{CompliancePolicy, Environment, EnvironmentPolicy, Organization};

/// Schema id of every score document.
pub const SCHEMA: &str = "catalyst.score/v1";

/// Who owns what, from the Catalyst custom resources: Organization → Sovereign, namespace →
/// (Organization, Environment, Application), Environment → its policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenants {
    sovereign_of: BTreeMap<String, String>,
    namespace: BTreeMap<String, (String, String, Option<String>)>,
    policy_of: BTreeMap<(String, String), EnvPolicy>,
}

/// The compliance-relevant part of an Environment's `EnvironmentPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvPolicy {
    /// Weights, modes and fix target.
    pub compliance: CompliancePolicy,
    /// Re-score gate on.
    pub gate_enabled: bool,
    /// Gate minimum score.
    pub gate_minimum: f64,
    /// Name of the `EnvironmentPolicy` (`None`: Catalyst's defaults).
    pub name: Option<String>,
}

impl EnvPolicy {
    fn catalyst() -> Self {
        Self {
            compliance: CompliancePolicy::default(),
            gate_enabled: true,
            gate_minimum: 90.0,
            name: None,
        }
    }
}

impl Tenants {
    /// From the custom resources.
    pub fn from_resources(
        orgs: &[Organization],
        envs: &[Environment],
        policies: &[EnvironmentPolicy],
    ) -> Self {
        let mut t = Self::default();
        for o in orgs {
            t.sovereign_of
                .insert(o.name_any(), o.spec.sovereign.clone());
        }
        for e in envs {
            for ns in &e.spec.namespaces {
                t.namespace.insert(
                    ns.name.clone(),
                    (
                        e.spec.organization.clone(),
                        e.spec.name.clone(),
                        ns.application.clone(),
                    ),
                );
            }
            let p = e
                .spec
                .policy
                .as_ref()
                .and_then(|name| policies.iter().find(|p| &p.name_any() == name));
            let ep = match p {
                Some(p) => {
                    let gate = p.spec.rules.re_score_gate.as_ref();
                    EnvPolicy {
                        compliance: p.spec.compliance.clone(),
                        gate_enabled: gate.is_none_or(|g| g.enabled),
                        gate_minimum: gate.map_or(90.0, |g| g.minimum_score),
                        name: Some(p.name_any()),
                    }
                }
                None => EnvPolicy::catalyst(),
            };
            t.policy_of
                .insert((e.spec.organization.clone(), e.spec.name.clone()), ep);
        }
        t
    }

    /// These tenants plus namespaces placed by their `openova.io/organization`,
    /// `openova.io/environment` and `openova.io/application` labels (the tenancy controller sets
    /// them; a namespace labelled by hand counts too). A namespace an Environment lists keeps the
    /// Environment's placement (the declaration wins over labels); a namespace without both the
    /// organization and environment labels is not placed.
    #[must_use]
    pub fn with_namespace_labels(&self, namespaces: &[(String, BTreeMap<String, String>)]) -> Self {
        let mut t = self.clone();
        for (name, labels) in namespaces {
            let (Some(org), Some(env)) = (
                labels.get("openova.io/organization"),
                labels.get("openova.io/environment"),
            ) else {
                continue;
            };
            t.namespace.entry(name.clone()).or_insert_with(|| {
                (
                    org.clone(),
                    env.clone(),
                    labels.get("openova.io/application").cloned(),
                )
            });
        }
        t
    }

    /// The Sovereign of an Organization, or `default`.
    pub fn sovereign<'a>(&'a self, org: &str, default: &'a str) -> &'a str {
        self.sovereign_of.get(org).map_or(default, String::as_str)
    }

    /// The (Organization, Environment, Application) owning a namespace.
    pub fn namespace(&self, ns: &str) -> Option<(&str, &str, Option<&str>)> {
        self.namespace
            .get(ns)
            .map(|(o, e, a)| (o.as_str(), e.as_str(), a.as_deref()))
    }

    fn policy(&self, org: &str, env: &str) -> Option<&EnvPolicy> {
        self.policy_of.get(&(org.to_owned(), env.to_owned()))
    }
}

/// A roll-up entry that failed an enforcing check.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EnforcingFailure {
    /// Environment.
    pub environment: String,
    /// Application.
    pub application: String,
    /// Check.
    pub check: String,
}

/// The re-score gate of an Environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// pass / fail / disabled / pending.
    pub state: GateState,
    /// Minimum score.
    pub minimum_score: f64,
    /// `EnvironmentPolicy` in force (`null`: Catalyst's defaults).
    pub policy: Option<String>,
}

/// A `catalyst.score/v1` document (docs/schemas/catalyst.score.v1.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreDoc {
    /// `catalyst.score/v1`.
    pub schema: &'static str,
    /// `application`, `environment`, `organization`, `sovereign`.
    pub level: &'static str,
    /// KV key.
    pub key: String,
    /// Sovereign.
    pub sovereign: String,
    /// Organization (below the Sovereign level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Environment (Environment and Application levels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Application (Application level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// 0–100 rounded to hundredths; `null` when nothing applies.
    pub score: Option<f64>,
    /// Weight in the level above.
    pub weight: f64,
    /// Applications under this entry with a score.
    pub applications: u32,
    /// Workloads under this entry.
    pub workloads: u32,
    /// Failing enforcing checks under this entry.
    pub failing_enforcing: Vec<EnforcingFailure>,
    /// Re-score gate (Environment level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Per-check results (Application level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckScore>>,
    /// What to fix (Application level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<FixList>,
}

/// Children of a roll-up: (weight, score) pairs, applications, workloads, enforcing failures.
type Acc = (Vec<(f64, Option<f64>)>, u32, u32, Vec<EnforcingFailure>);

/// A scored application: what the roll-ups need, and its document, kept serialised so that a
/// publication re-serialises only the applications whose rows changed.
#[derive(Debug)]
struct AppEntry {
    key: String,
    score: Option<f64>,
    workloads: u32,
    failing_enforcing: Vec<String>,
    weight: f64,
    bytes: Bytes,
}

/// One document ready to publish: its level, score and gate (for metrics) and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `application`, `environment`, `organization`, `sovereign`.
    pub level: &'static str,
    /// Published score.
    pub score: Option<f64>,
    /// Gate state (Environment level).
    pub gate: Option<GateState>,
    /// The `catalyst.score/v1` JSON.
    pub bytes: Bytes,
}

/// Everything to publish: every document's bytes by KV key, and the roll-up documents (for
/// the Environment / Organization status).
#[derive(Debug, Default)]
pub struct Publication {
    /// Every document by KV key.
    pub entries: BTreeMap<String, Entry>,
    /// Environment, Organization and Sovereign documents by KV key.
    pub rollups: BTreeMap<String, ScoreDoc>,
}

/// Aggregator state.
#[derive(Debug)]
pub struct Aggregator {
    cfg: ComplianceConfig,
    catalog: Catalog,
    tenants: Tenants,
    store: RowStore,
    apps: BTreeMap<AppKey, AppEntry>,
    dirty: BTreeSet<AppKey>,
    all_dirty: bool,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(cfg: ComplianceConfig) -> Self {
        let catalog = Catalog::new(&cfg.checks, cfg.unknown_check);
        Self {
            cfg,
            catalog,
            tenants: Tenants::default(),
            store: RowStore::new(),
            apps: BTreeMap::new(),
            dirty: BTreeSet::new(),
            all_dirty: true,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ComplianceConfig {
        &self.cfg
    }

    /// The tenants in force.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Replaces the tenant information (every application is re-scored: policies may differ).
    pub fn set_tenants(&mut self, t: Tenants) {
        self.tenants = t;
        let (tenants, default) = (&self.tenants, self.cfg.default_sovereign.as_str());
        self.store.rekey(|k| AppKey {
            sovereign: tenants.sovereign(&k.organization, default).to_owned(),
            ..k.clone()
        });
        self.all_dirty = true;
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.store.len()
    }

    /// Ingests one row received at `at_ms`.
    pub fn ingest(&mut self, row: Row, at_ms: i64) {
        let app = (!self.dirty.contains(&row.app)).then(|| row.app.clone());
        if self.store.upsert(row, at_ms)
            && let Some(app) = app
        {
            self.dirty.insert(app);
        }
    }

    /// Replaces all rows of a file-fed source.
    pub fn replace_source(&mut self, source: Source, rows: Vec<Row>, at_ms: i64) {
        for app in self.store.replace_source(source, rows, at_ms) {
            self.dirty.insert(app);
        }
    }

    /// Drops rows of `source` received before `before_ms`.
    pub fn expire(&mut self, source: Source, before_ms: i64) {
        for app in self.store.expire(source, before_ms) {
            self.dirty.insert(app);
        }
    }

    /// Whether something changed since the last [`Self::publication`].
    pub fn is_dirty(&self) -> bool {
        self.all_dirty || !self.dirty.is_empty()
    }

    fn policy(&self, app: &AppKey) -> Option<&EnvPolicy> {
        self.tenants.policy(&app.organization, &app.environment)
    }

    fn score(&self, app: &AppKey) -> AppScore {
        let policy = self.policy(app).map(|p| &p.compliance);
        let target = policy.map_or(self.cfg.target, |p| p.target);
        score::score_app(
            self.store.rows_of(app),
            &self.catalog,
            policy,
            target,
            self.cfg.max_evidence,
        )
    }

    fn rescore(&mut self) {
        let keys: Vec<AppKey> = if self.all_dirty {
            self.apps.clear();
            self.store.apps().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        self.all_dirty = false;
        self.dirty.clear();
        for app in keys {
            if !self.store.has(&app) {
                self.apps.remove(&app);
                continue;
            }
            let s = self.score(&app);
            let weight = self.app_weight(&app, &s);
            let doc = app_doc(&app, &s, weight);
            let bytes = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            self.apps.insert(
                app,
                AppEntry {
                    key: doc.key,
                    score: s.score,
                    workloads: s.workloads,
                    failing_enforcing: s.failing_enforcing,
                    weight,
                    bytes,
                },
            );
        }
    }

    fn app_weight(&self, app: &AppKey, s: &AppScore) -> f64 {
        let name = format!(
            "{}/{}/{}",
            app.organization, app.environment, app.application
        );
        if let Some(w) = self.cfg.application_weights.get(&name) {
            return *w;
        }
        match self.cfg.application_weight {
            AppWeighting::Workloads => f64::from(s.workloads.max(1)),
            AppWeighting::Equal => 1.0,
        }
    }

    /// Every document to publish, after re-scoring the applications whose rows changed: the
    /// other applications' documents are reused as serialised before.
    ///
    /// # Panics
    /// Never: score documents are plain data and always serialise.
    pub fn publication(&mut self) -> Publication {
        self.rescore();
        let rollups = self.rollups();
        let mut entries = BTreeMap::new();
        for e in self.apps.values() {
            entries.insert(
                e.key.clone(),
                Entry {
                    level: "application",
                    score: e.score.map(score::publish_round),
                    gate: None,
                    bytes: e.bytes.clone(),
                },
            );
        }
        for (k, d) in &rollups {
            entries.insert(
                k.clone(),
                Entry {
                    level: d.level,
                    score: d.score,
                    gate: d.gate.as_ref().map(|g| g.state),
                    bytes: Bytes::from(serde_json::to_vec(d).expect("a score document serialises")),
                },
            );
        }
        Publication { entries, rollups }
    }

    /// Every score document by KV key, in full (the application documents are re-scored from
    /// the rows: for inspection and tests; the shell publishes [`Self::publication`]).
    pub fn documents(&mut self) -> BTreeMap<String, ScoreDoc> {
        self.rescore();
        let mut out = self.rollups();
        for (app, e) in &self.apps {
            out.insert(e.key.clone(), app_doc(app, &self.score(app), e.weight));
        }
        out
    }

    /// The Environment, Organization and Sovereign documents from the scored applications.
    fn rollups(&self) -> BTreeMap<String, ScoreDoc> {
        let mut out = BTreeMap::new();
        // Environments: (sov, org, env) → children.
        let mut envs: BTreeMap<(&str, &str, &str), Acc> = BTreeMap::new();
        for (app, a) in &self.apps {
            let e = envs
                .entry((&app.sovereign, &app.organization, &app.environment))
                .or_default();
            e.0.push((a.weight, a.score));
            e.1 += u32::from(a.score.is_some());
            e.2 += a.workloads;
            e.3.extend(a.failing_enforcing.iter().map(|c| EnforcingFailure {
                environment: app.environment.clone(),
                application: app.application.clone(),
                check: c.clone(),
            }));
        }
        let mut orgs: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
        for ((sov, org, env), (children, apps, workloads, failing)) in envs {
            let (sc, w) = score::roll_up(children);
            let p = self
                .tenants
                .policy(org, env)
                .cloned()
                .unwrap_or_else(EnvPolicy::catalyst);
            let state = score::gate(p.gate_enabled, p.gate_minimum, sc, failing.len());
            let o = orgs.entry((sov, org)).or_default();
            o.0.push((w, sc));
            o.1 += apps;
            o.2 += workloads;
            o.3.extend(failing.iter().cloned());
            let mut d = rollup_doc(
                "environment",
                format!("{}.{}.{}", token(sov), token(org), token(env)),
                (sov, Some(org), Some(env)),
                sc,
                w,
                (apps, workloads, failing),
            );
            d.gate = Some(Gate {
                state,
                minimum_score: p.gate_minimum,
                policy: p.name,
            });
            out.insert(d.key.clone(), d);
        }
        let mut sovs: BTreeMap<&str, Acc> = BTreeMap::new();
        for ((sov, org), (children, apps, workloads, failing)) in orgs {
            let (sc, w) = score::roll_up(children);
            let s = sovs.entry(sov).or_default();
            s.0.push((w, sc));
            s.1 += apps;
            s.2 += workloads;
            s.3.extend(failing.iter().cloned());
            let d = rollup_doc(
                "organization",
                format!("{}.{}", token(sov), token(org)),
                (sov, Some(org), None),
                sc,
                w,
                (apps, workloads, failing),
            );
            out.insert(d.key.clone(), d);
        }
        for (sov, (children, apps, workloads, failing)) in sovs {
            let (sc, w) = score::roll_up(children);
            let d = rollup_doc(
                "sovereign",
                token(sov),
                (sov, None, None),
                sc,
                w,
                (apps, workloads, failing),
            );
            out.insert(d.key.clone(), d);
        }
        out
    }
}

/// The document of an application.
fn app_doc(app: &AppKey, s: &AppScore, weight: f64) -> ScoreDoc {
    ScoreDoc {
        schema: SCHEMA,
        level: "application",
        key: app.kv_key(),
        sovereign: app.sovereign.clone(),
        organization: Some(app.organization.clone()),
        environment: Some(app.environment.clone()),
        application: Some(app.application.clone()),
        score: s.score.map(score::publish_round),
        weight,
        applications: u32::from(s.score.is_some()),
        workloads: s.workloads,
        failing_enforcing: s
            .failing_enforcing
            .iter()
            .map(|c| EnforcingFailure {
                environment: app.environment.clone(),
                application: app.application.clone(),
                check: c.clone(),
            })
            .collect(),
        gate: None,
        checks: Some(s.checks.clone()),
        fix: Some(s.fix.clone()),
    }
}

/// The document of a roll-up of (sovereign, organization, environment), the levels below the
/// roll-up's `None`.
fn rollup_doc(
    level: &'static str,
    key: String,
    (sov, org, env): (&str, Option<&str>, Option<&str>),
    score: Option<f64>,
    weight: f64,
    (applications, workloads, failing_enforcing): (u32, u32, Vec<EnforcingFailure>),
) -> ScoreDoc {
    ScoreDoc {
        schema: SCHEMA,
        level,
        key,
        sovereign: sov.to_owned(),
        organization: org.map(str::to_owned),
        environment: env.map(str::to_owned),
        application: None,
        score: score.map(score::publish_round),
        weight,
        applications,
        workloads,
        failing_enforcing,
        gate: None,
        checks: None,
        fix: None,
    }
}

/// What changed between two publications: keys with their new bytes (`None`: deleted).
#[derive(Debug, Default)]
pub struct Published {
    last: BTreeMap<String, Bytes>,
}

impl Published {
    /// Starts from what the store already holds (e.g. the KV's values at start), so a restarted
    /// aggregator that computes the same values writes nothing.
    pub fn with(last: BTreeMap<String, Bytes>) -> Self {
        Self { last }
    }

    /// The values last published.
    pub fn values(&self) -> &BTreeMap<String, Bytes> {
        &self.last
    }

    /// Changes from the last publication to `entries`, recorded as published.
    pub fn diff(&mut self, entries: &BTreeMap<String, Entry>) -> Vec<(String, Option<Bytes>)> {
        let mut changes = Vec::new();
        let mut next = BTreeMap::new();
        for (k, e) in entries {
            if self.last.get(k) != Some(&e.bytes) {
                changes.push((k.clone(), Some(e.bytes.clone())));
            }
            next.insert(k.clone(), e.bytes.clone());
        }
        for k in self.last.keys() {
            if !next.contains_key(k) {
                changes.push((k.clone(), None));
            }
        }
        self.last = next;
        changes
    }
}
