//! The aggregator's state: rows in, `catalyst.score/v1` documents out, per level, recomputing
//! only the applications whose rows changed.

use std::collections::{BTreeMap, BTreeSet};

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
#[derive(Debug, Clone, Default)]
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

/// Aggregator state.
#[derive(Debug)]
pub struct Aggregator {
    cfg: ComplianceConfig,
    catalog: Catalog,
    tenants: Tenants,
    store: RowStore,
    apps: BTreeMap<AppKey, (AppScore, f64)>,
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
        let app = row.app.clone();
        if self.store.upsert(row, at_ms) {
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

    /// Whether something changed since the last [`Self::documents`].
    pub fn is_dirty(&self) -> bool {
        self.all_dirty || !self.dirty.is_empty()
    }

    fn policy(&self, app: &AppKey) -> Option<&EnvPolicy> {
        self.tenants.policy(&app.organization, &app.environment)
    }

    fn rescore(&mut self) {
        let keys: Vec<AppKey> = if self.all_dirty {
            self.store.apps().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        if self.all_dirty {
            self.apps.clear();
        }
        self.all_dirty = false;
        self.dirty.clear();
        for app in keys {
            if self.store.rows_of(&app).next().is_none() {
                self.apps.remove(&app);
                continue;
            }
            let policy = self.policy(&app).map(|p| &p.compliance);
            let target = policy.map_or(self.cfg.target, |p| p.target);
            let s = score::score_app(
                self.store.rows_of(&app),
                &self.catalog,
                policy,
                target,
                self.cfg.max_evidence,
            );
            let weight = self.app_weight(&app, &s);
            self.apps.insert(app, (s, weight));
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

    /// Every score document by KV key, after re-scoring what changed.
    #[expect(
        clippy::too_many_lines,
        reason = "one pass per level, each a few lines; splitting hides the roll-up chain"
    )]
    pub fn documents(&mut self) -> BTreeMap<String, ScoreDoc> {
        self.rescore();
        let mut out = BTreeMap::new();
        // Environments: (sov, org, env) → children.
        let mut envs: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
        for (app, (s, w)) in &self.apps {
            let failing: Vec<EnforcingFailure> = s
                .failing_enforcing
                .iter()
                .map(|c| EnforcingFailure {
                    environment: app.environment.clone(),
                    application: app.application.clone(),
                    check: c.clone(),
                })
                .collect();
            let key = app.kv_key();
            out.insert(
                key.clone(),
                ScoreDoc {
                    schema: SCHEMA,
                    level: "application",
                    key,
                    sovereign: app.sovereign.clone(),
                    organization: Some(app.organization.clone()),
                    environment: Some(app.environment.clone()),
                    application: Some(app.application.clone()),
                    score: s.score.map(score::publish_round),
                    weight: *w,
                    applications: u32::from(s.score.is_some()),
                    workloads: s.workloads,
                    failing_enforcing: failing.clone(),
                    gate: None,
                    checks: Some(s.checks.clone()),
                    fix: Some(s.fix.clone()),
                },
            );
            let e = envs
                .entry((
                    app.sovereign.clone(),
                    app.organization.clone(),
                    app.environment.clone(),
                ))
                .or_default();
            e.0.push((*w, s.score));
            e.1 += u32::from(s.score.is_some());
            e.2 += s.workloads;
            e.3.extend(failing);
        }
        let mut orgs: BTreeMap<(String, String), Acc> = BTreeMap::new();
        for ((sov, org, env), (children, apps, workloads, failing)) in envs {
            let (sc, w) = score::roll_up(children);
            let p = self
                .tenants
                .policy(&org, &env)
                .cloned()
                .unwrap_or_else(EnvPolicy::catalyst);
            let state = score::gate(p.gate_enabled, p.gate_minimum, sc, failing.len());
            let key = format!("{}.{}.{}", token(&sov), token(&org), token(&env));
            let o = orgs.entry((sov.clone(), org.clone())).or_default();
            o.0.push((w, sc));
            o.1 += apps;
            o.2 += workloads;
            o.3.extend(failing.iter().cloned());
            out.insert(
                key.clone(),
                ScoreDoc {
                    schema: SCHEMA,
                    level: "environment",
                    key,
                    sovereign: sov,
                    organization: Some(org),
                    environment: Some(env),
                    application: None,
                    score: sc.map(score::publish_round),
                    weight: w,
                    applications: apps,
                    workloads,
                    failing_enforcing: failing,
                    gate: Some(Gate {
                        state,
                        minimum_score: p.gate_minimum,
                        policy: p.name,
                    }),
                    checks: None,
                    fix: None,
                },
            );
        }
        let mut sovs: BTreeMap<String, Acc> = BTreeMap::new();
        for ((sov, org), (children, apps, workloads, failing)) in orgs {
            let (sc, w) = score::roll_up(children);
            let s = sovs.entry(sov.clone()).or_default();
            s.0.push((w, sc));
            s.1 += apps;
            s.2 += workloads;
            s.3.extend(failing.iter().cloned());
            let key = format!("{}.{}", token(&sov), token(&org));
            out.insert(
                key.clone(),
                ScoreDoc {
                    schema: SCHEMA,
                    level: "organization",
                    key,
                    sovereign: sov,
                    organization: Some(org),
                    environment: None,
                    application: None,
                    score: sc.map(score::publish_round),
                    weight: w,
                    applications: apps,
                    workloads,
                    failing_enforcing: failing,
                    gate: None,
                    checks: None,
                    fix: None,
                },
            );
        }
        for (sov, (children, apps, workloads, failing)) in sovs {
            let (sc, w) = score::roll_up(children);
            let key = token(&sov);
            out.insert(
                key.clone(),
                ScoreDoc {
                    schema: SCHEMA,
                    level: "sovereign",
                    key,
                    sovereign: sov,
                    organization: None,
                    environment: None,
                    application: None,
                    score: sc.map(score::publish_round),
                    weight: w,
                    applications: apps,
                    workloads,
                    failing_enforcing: failing,
                    gate: None,
                    checks: None,
                    fix: None,
                },
            );
        }
        out
    }
}

/// What changed between two publications: keys with their new bytes (`None`: deleted).
#[derive(Debug, Default)]
pub struct Published {
    last: BTreeMap<String, Vec<u8>>,
}

impl Published {
    /// Starts from what the store already holds (e.g. the KV's values at start), so a restarted
    /// aggregator that computes the same values writes nothing.
    pub fn with(last: BTreeMap<String, Vec<u8>>) -> Self {
        Self { last }
    }

    /// The values last published.
    pub fn values(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.last
    }

    /// Changes from the last publication to `docs`, recorded as published.
    ///
    /// # Panics
    /// Never: score documents are plain data and always serialise.
    pub fn diff(&mut self, docs: &BTreeMap<String, ScoreDoc>) -> Vec<(String, Option<Vec<u8>>)> {
        let mut changes = Vec::new();
        let mut next = BTreeMap::new();
        for (k, d) in docs {
            let bytes = serde_json::to_vec(d).expect("a score document serialises");
            if self.last.get(k) != Some(&bytes) {
                changes.push((k.clone(), Some(bytes.clone())));
            }
            next.insert(k.clone(), bytes);
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
