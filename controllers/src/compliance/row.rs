//! The uniform row model: one result of one check for one workload, whatever produced it.

use std::collections::BTreeMap;

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

/// Identity of a row in the store: a newer row with the same identity replaces the older one.
pub type RowId = (Source, String, AppKey, Workload);

impl Row {
    /// The row's identity.
    pub fn id(&self) -> RowId {
        (
            self.source,
            self.check.clone(),
            self.app.clone(),
            self.workload.clone(),
        )
    }
}

/// Rows of one application by (source, check, workload), with their receive time.
type AppRows = BTreeMap<(Source, String, Workload), (Row, i64)>;

/// The latest row per identity, grouped by application. Each row carries the time it was
/// received (stream time for NATS inputs), used to expire rows of vanished workloads.
#[derive(Debug, Clone, Default)]
pub struct RowStore {
    apps: BTreeMap<AppKey, AppRows>,
    len: usize,
}

impl RowStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a row received at `at_ms` (Unix milliseconds). Returns whether the
    /// application's inputs changed (outcome or evidence), so unchanged heartbeats cost no
    /// re-scoring.
    pub fn upsert(&mut self, row: Row, at_ms: i64) -> bool {
        let app = self.apps.entry(row.app.clone()).or_default();
        let key = (row.source, row.check.clone(), row.workload.clone());
        if let Some((old, t)) = app.get_mut(&key) {
            *t = at_ms;
            if old.outcome == row.outcome && old.evidence == row.evidence {
                old.observed_at = row.observed_at;
                false
            } else {
                *old = row;
                true
            }
        } else {
            app.insert(key, (row, at_ms));
            self.len += 1;
            true
        }
    }

    /// Replaces every row of `source` with `rows` (file inputs: the files are the whole truth).
    /// Returns the applications whose rows changed.
    pub fn replace_source(&mut self, source: Source, rows: Vec<Row>, at_ms: i64) -> Vec<AppKey> {
        let mut incoming: BTreeMap<RowId, Row> = BTreeMap::new();
        for r in rows {
            incoming.insert(r.id(), r);
        }
        let mut changed = std::collections::BTreeSet::new();
        for (app, rows) in &mut self.apps {
            rows.retain(|(s, c, w), _| {
                let keep =
                    *s != source || incoming.contains_key(&(*s, c.clone(), app.clone(), w.clone()));
                if !keep {
                    changed.insert(app.clone());
                }
                keep
            });
        }
        for (_, r) in incoming {
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
        for (app, rows) in &mut self.apps {
            let n = rows.len();
            rows.retain(|(s, _, _), (_, t)| *s != source || *t >= before_ms);
            if rows.len() != n {
                changed.push(app.clone());
            }
        }
        self.recount();
        changed
    }

    fn recount(&mut self) {
        self.apps.retain(|_, r| !r.is_empty());
        self.len = self.apps.values().map(BTreeMap::len).sum();
    }

    /// Moves every row to the application `f` gives for its key (e.g. a new Sovereign after
    /// an Organization changed).
    pub fn rekey(&mut self, f: impl Fn(&AppKey) -> AppKey) {
        let old = std::mem::take(&mut self.apps);
        for (app, rows) in old {
            let new = f(&app);
            let target = self.apps.entry(new.clone()).or_default();
            for (k, (mut row, t)) in rows {
                row.app = new.clone();
                target.insert(k, (row, t));
            }
        }
        self.recount();
    }

    /// Rows of one application.
    pub fn rows_of<'a>(&'a self, app: &AppKey) -> impl Iterator<Item = &'a Row> + 'a {
        self.apps
            .get(app)
            .into_iter()
            .flat_map(|r| r.values().map(|(row, _)| row))
    }

    /// Applications with at least one row.
    pub fn apps(&self) -> impl Iterator<Item = &AppKey> {
        self.apps.keys()
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
