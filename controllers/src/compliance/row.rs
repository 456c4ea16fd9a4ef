//! The uniform row model: one result of one check for one workload, whatever produced it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// The result of a check, from the compliance point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    /// Compliant.
    #[serde(rename = "pass")]
    Pass,
    /// Not compliant.
    #[serde(rename = "fail")]
    Fail,
    /// Nothing to judge: the check does not apply to the workload.
    #[serde(rename = "n-a")]
    NotApplicable,
}

impl Outcome {
    /// The wire name (`pass`, `fail`, `n-a`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::NotApplicable => "n-a",
        }
    }
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A `catalyst.signal/v1` of the agent.
    Signal,
    /// A catalyst-dns health transition.
    Health,
    /// A Kyverno `PolicyReport` / `OpenReports` `Report`.
    PolicyReport,
    /// The aggregator's own evaluators over workload objects.
    Evaluator,
}

impl Source {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Health => "health",
            Self::PolicyReport => "policy-report",
            Self::Evaluator => "evaluator",
        }
    }
}

/// The application a workload belongs to (the `openova.io/*` labels, with the Sovereign from
/// its Organization).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AppKey {
    /// Sovereign.
    pub sovereign: String,
    /// Organization.
    pub organization: String,
    /// Environment.
    pub environment: String,
    /// Application.
    pub application: String,
}

impl AppKey {
    /// `<sovereign>.<org>.<env>.<app>` with every token subject-safe ([`token`]).
    pub fn kv_key(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            token(&self.sovereign),
            token(&self.organization),
            token(&self.environment),
            token(&self.application)
        )
    }
}

/// A NATS subject / KV key token: characters other than ASCII letters, digits, `-` and `_`
/// become `_` (as the agent does for signal subjects); an empty value is `_`.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The workload a row judges: `kind/namespace/name` (a pod for agent signals, a Deployment for
/// the evaluators, the report's resource for `PolicyReports`, `failover-target/<zone>/<target>`
/// for health events).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// Kind (`Pod`, `Deployment`, …).
    pub kind: String,
    /// Namespace (empty for cluster-scoped subjects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One result of one check for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Check id (`multi-replica`, `ingress-default-deny`, a Kyverno policy name, …).
    pub check: String,
    /// The application of the workload.
    pub app: AppKey,
    /// The workload.
    pub workload: Workload,
    /// Pass, fail or n-a.
    pub outcome: Outcome,
    /// Why (free-form JSON object from the producer).
    pub evidence: serde_json::Value,
    /// When the producer evaluated it, RFC 3339 (as given; informative).
    pub observed_at: String,
    /// Producer.
    pub source: Source,
}

/// The evidence of a row as the scoring reads it: the producer's JSON (a fresh row) or its
/// compact text (a stored failing row).
#[derive(Debug, Clone, Copy)]
pub enum Evidence<'a> {
    /// As received.
    Value(&'a serde_json::Value),
    /// Compact JSON text (the store keeps evidence of failing rows only, as text).
    Text(&'a str),
    /// Not kept (passing and n-a rows: evidence is shown for failures only).
    None,
}

impl Evidence<'_> {
    /// The evidence as JSON.
    pub fn to_value(self) -> serde_json::Value {
        match self {
            Self::Value(v) => v.clone(),
            Self::Text(t) => serde_json::from_str(t).unwrap_or(serde_json::Value::Null),
            Self::None => serde_json::Value::Null,
        }
    }
}

/// A row as the scoring reads it, borrowed from a [`Row`] or from the [`RowStore`].
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    /// Check id.
    pub check: &'a str,
    /// The workload.
    pub workload: &'a Workload,
    /// Pass, fail or n-a.
    pub outcome: Outcome,
    /// Producer.
    pub source: Source,
    /// Why.
    pub evidence: Evidence<'a>,
}

impl<'a> From<&'a Row> for RowRef<'a> {
    fn from(r: &'a Row) -> Self {
        Self {
            check: &r.check,
            workload: &r.workload,
            outcome: r.outcome,
            source: r.source,
            evidence: Evidence::Value(&r.evidence),
        }
    }
}

/// One stored row of a workload: 32 bytes, the check interned, evidence kept as compact JSON
/// text and only while the row fails (documents show evidence of failures only), the producer's
/// `observed_at` not kept (informative, never published: a value changes only when a score or
/// its explanation does).
#[derive(Debug, Clone)]
struct Slot {
    check: u32,
    source: Source,
    outcome: Outcome,
    /// Receive time (stream time for NATS inputs), Unix ms, to expire vanished workloads.
    at_ms: i64,
    evidence: Option<Box<str>>,
}

/// Rows of one application: per workload (stored once), its slots.
type AppRows = BTreeMap<Workload, Vec<Slot>>;

/// Check ids, interned: a catalogue of a few dozen names shared by every row (names are never
/// dropped: the set is the checks the producers know, small and stable).
#[derive(Debug, Clone, Default)]
struct Checks {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Checks {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// Compact JSON of the evidence of a failing row; `None` otherwise.
fn kept_evidence(outcome: Outcome, evidence: &serde_json::Value) -> Option<Box<str>> {
    (outcome == Outcome::Fail).then(|| evidence.to_string().into_boxed_str())
}

/// The latest row per (source, check, workload), grouped by application and workload. Each row
/// carries the time it was received (stream time for NATS inputs), used to expire rows of
/// vanished workloads.
#[derive(Debug, Clone, Default)]
pub struct RowStore {
    apps: BTreeMap<AppKey, AppRows>,
    checks: Checks,
    len: usize,
}

impl RowStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a row received at `at_ms` (Unix milliseconds). Returns whether the
    /// application's inputs changed (the outcome, or the evidence of a failing row), so
    /// unchanged heartbeats cost no re-scoring.
    pub fn upsert(&mut self, row: Row, at_ms: i64) -> bool {
        let check = self.checks.intern(&row.check);
        // The row owns its keys: moved in when new, dropped otherwise.
        let slots = self
            .apps
            .entry(row.app)
            .or_default()
            .entry(row.workload)
            .or_default();
        if let Some(old) = slots
            .iter_mut()
            .find(|s| s.check == check && s.source == row.source)
        {
            old.at_ms = at_ms;
            let evidence = kept_evidence(row.outcome, &row.evidence);
            if old.outcome == row.outcome && old.evidence == evidence {
                return false;
            }
            old.outcome = row.outcome;
            old.evidence = evidence;
            return true;
        }
        slots.push(Slot {
            check,
            source: row.source,
            outcome: row.outcome,
            at_ms,
            evidence: kept_evidence(row.outcome, &row.evidence),
        });
        self.len += 1;
        true
    }

    /// Replaces every row of `source` with `rows` (file inputs: the files are the whole truth).
    /// Returns the applications whose rows changed.
    pub fn replace_source(&mut self, source: Source, rows: Vec<Row>, at_ms: i64) -> Vec<AppKey> {
        let mut incoming: BTreeMap<AppKey, BTreeMap<Workload, BTreeSet<String>>> = BTreeMap::new();
        for r in &rows {
            incoming
                .entry(r.app.clone())
                .or_default()
                .entry(r.workload.clone())
                .or_default()
                .insert(r.check.clone());
        }
        let mut changed = BTreeSet::new();
        let checks = &self.checks;
        for (app, workloads) in &mut self.apps {
            let wanted = incoming.get(app);
            for (w, slots) in workloads.iter_mut() {
                let wanted = wanted.and_then(|i| i.get(w));
                let n = slots.len();
                slots.retain(|s| {
                    s.source != source || wanted.is_some_and(|c| c.contains(checks.name(s.check)))
                });
                if slots.len() != n {
                    changed.insert(app.clone());
                }
            }
        }
        for r in rows {
            let app = r.app.clone();
            if self.upsert(r, at_ms) {
                changed.insert(app);
            }
        }
        self.recount();
        changed.into_iter().collect()
    }

    /// Drops rows of `source` received before `before_ms`. Returns the applications affected.
    pub fn expire(&mut self, source: Source, before_ms: i64) -> Vec<AppKey> {
        let mut changed = Vec::new();
        for (app, workloads) in &mut self.apps {
            let mut dropped = false;
            for slots in workloads.values_mut() {
                let n = slots.len();
                slots.retain(|s| s.source != source || s.at_ms >= before_ms);
                dropped |= slots.len() != n;
            }
            if dropped {
                changed.push(app.clone());
            }
        }
        if !changed.is_empty() {
            self.recount();
        }
        changed
    }

    fn recount(&mut self) {
        for workloads in self.apps.values_mut() {
            workloads.retain(|_, s| !s.is_empty());
        }
        self.apps.retain(|_, w| !w.is_empty());
        self.len = self
            .apps
            .values()
            .flat_map(BTreeMap::values)
            .map(Vec::len)
            .sum();
    }

    /// Moves every row to the application `f` gives for its key (e.g. a new Sovereign after
    /// an Organization changed).
    pub fn rekey(&mut self, f: impl Fn(&AppKey) -> AppKey) {
        let old = std::mem::take(&mut self.apps);
        for (app, rows) in old {
            let target = self.apps.entry(f(&app)).or_default();
            if target.is_empty() {
                *target = rows;
                continue;
            }
            for (w, slots) in rows {
                let t = target.entry(w).or_default();
                for s in slots {
                    match t
                        .iter_mut()
                        .find(|x| x.check == s.check && x.source == s.source)
                    {
                        Some(x) => *x = s,
                        None => t.push(s),
                    }
                }
            }
        }
        self.recount();
    }

    /// Rows of one application.
    pub fn rows_of<'a>(&'a self, app: &AppKey) -> impl Iterator<Item = RowRef<'a>> + 'a {
        let checks = &self.checks;
        self.apps.get(app).into_iter().flat_map(move |workloads| {
            workloads.iter().flat_map(move |(w, slots)| {
                slots.iter().map(move |s| RowRef {
                    check: checks.name(s.check),
                    workload: w,
                    outcome: s.outcome,
                    source: s.source,
                    evidence: s.evidence.as_deref().map_or(Evidence::None, Evidence::Text),
                })
            })
        })
    }

    /// Applications with at least one row.
    pub fn apps(&self) -> impl Iterator<Item = &AppKey> {
        self.apps.keys()
    }

    /// Whether `app` has rows.
    pub fn has(&self, app: &AppKey) -> bool {
        self.apps.contains_key(app)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
