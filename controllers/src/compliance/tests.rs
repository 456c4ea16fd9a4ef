//! Scoring core: table tests against hand-computed Catalyst examples and property tests.
#![expect(
    clippy::float_cmp,
    reason = "published scores are rounded to hundredths and compared exactly"
)]

use proptest::prelude::*;
use serde_json::json;

use super::{
    score::{self, GateState, fix_list, roll_up, weighted_score},
    *,
};

fn app(org: &str, env: &str, name: &str) -> AppKey {
    AppKey {
        sovereign: "eu".into(),
        organization: org.into(),
        environment: env.into(),
        application: name.into(),
    }
}

fn row(check: &str, workload: &str, outcome: Outcome) -> Row {
    row_in(app("acme", "prod", "shop"), check, workload, outcome)
}

fn row_in(app: AppKey, check: &str, workload: &str, outcome: Outcome) -> Row {
    Row {
        check: check.into(),
        app,
        workload: Workload {
            kind: "Deployment".into(),
            namespace: "shop".into(),
            name: workload.into(),
        },
        outcome,
        evidence: json!({"reason": outcome.as_str()}),
        observed_at: "2026-12-04T10:00:00Z".into(),
        source: Source::Evaluator,
    }
}

/// The eleven sample policies for one workload, with the given failures and n-a checks.
fn sample(workload: &str, fail: &[&str], na: &[&str]) -> Vec<Row> {
    CATALYST_DEFAULTS[..11]
        .iter()
        .map(|(c, _, _)| {
            let o = if fail.contains(c) {
                Outcome::Fail
            } else if na.contains(c) {
                Outcome::NotApplicable
            } else {
                Outcome::Pass
            };
            row(c, workload, o)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn catalyst_defaults_are_the_issue_weights() {
    let c = Catalog::catalyst();
    let sample: f64 = CATALYST_DEFAULTS[..11].iter().map(|x| x.1).sum();
    assert!(
        close(sample, 92.0),
        "the sample weights sum to 92 %: {sample}"
    );
    assert_eq!(c.setting("probes", None).mode, Mode::Enforcing);
    assert_eq!(c.setting("multi-replica", None).mode, Mode::Permissive);
    assert!(close(c.setting("pdb-present", None).weight, 15.0));
    assert!(close(c.setting("some-kyverno-policy", None).weight, 1.0));
}

/// Hand-computed: limits n-a → denominator 92 − 4 = 88; PDB (15) and Harbor (5) fail → 68 / 88 =
/// 77.27 %. To reach 90: PDB first (gain 1500/88 = 17.05 → 94.32), Harbor not needed.
#[test]
fn one_workload_hand_computed() {
    let rows = sample(
        "web",
        &["pdb-present", "harbor-proxy"],
        &["resource-limits"],
    );
    let s = score::score_app(&rows, &Catalog::catalyst(), None, 90.0, 10);
    assert!(close(s.score.unwrap(), 6800.0 / 88.0), "{:?}", s.score);
    assert_eq!(score::publish_round(s.score.unwrap()), 77.27);
    assert_eq!(s.failing_enforcing, vec!["harbor-proxy".to_owned()]);
    assert_eq!(s.fix.steps.len(), 1);
    assert_eq!(s.fix.steps[0].check, "pdb-present");
    assert_eq!(s.fix.steps[0].gain, 17.05);
    assert_eq!(s.fix.steps[0].score_after, 94.32);
    assert!(s.fix.reachable);
    let limits = s
        .checks
        .iter()
        .find(|c| c.check == "resource-limits")
        .unwrap();
    assert_eq!(limits.result, Outcome::NotApplicable);
    let pdb = s.checks.iter().find(|c| c.check == "pdb-present").unwrap();
    assert_eq!(pdb.failures.len(), 1);
    assert_eq!(pdb.failures[0].workload, "Deployment/shop/web");
}

/// Hand-computed: two workloads, `multi-replica` passes on one (ratio ½) and `topology-spread`
/// fails on both: (92 − 15/2 − 10) / 92 = 74.5 / 92 = 80.98 %. Fix: topology (10.87) → 91.85.
#[test]
fn two_workloads_partial_check() {
    let mut rows = sample("web", &["topology-spread"], &[]);
    rows.extend(sample("api", &["topology-spread", "multi-replica"], &[]));
    let s = score::score_app(&rows, &Catalog::catalyst(), None, 90.0, 10);
    assert_eq!(score::publish_round(s.score.unwrap()), 80.98);
    assert_eq!(s.workloads, 2);
    let steps: Vec<(&str, f64)> = s
        .fix
        .steps
        .iter()
        .map(|x| (x.check.as_str(), x.gain))
        .collect();
    assert_eq!(steps, vec![("topology-spread", 10.87)]);
    assert!(s.failing_enforcing.is_empty());
}

/// An `EnvironmentPolicy` that makes `multi-replica` enforcing and turns `pdb-present` off.
#[test]
fn environment_policy_overrides() {
    let policy: crate::crd::CompliancePolicy = serde_json::from_value(json!({
        "target": 95,
        "checks": [
            {"check": "multi-replica", "mode": "Enforcing"},
            {"check": "pdb-present", "weight": 0}
        ]
    }))
    .unwrap();
    let rows = sample("web", &["multi-replica", "pdb-present"], &[]);
    let s = score::score_app(
        &rows,
        &Catalog::catalyst(),
        Some(&policy),
        policy.target,
        10,
    );
    // PDB weighs 0: denominator 92 − 15 = 77, multi-replica fails: 62 / 77.
    assert!(close(s.score.unwrap(), 6200.0 / 77.0));
    assert_eq!(s.failing_enforcing, vec!["multi-replica".to_owned()]);
    assert_eq!(s.fix.target, 95.0);
    assert_eq!(s.fix.steps[0].check, "multi-replica");
}

#[test]
fn gate_fails_on_enforcing_check_regardless_of_score() {
    assert_eq!(score::gate(true, 90.0, Some(99.0), 1), GateState::Fail);
    assert_eq!(score::gate(true, 90.0, Some(89.99), 0), GateState::Fail);
    assert_eq!(score::gate(true, 90.0, Some(90.0), 0), GateState::Pass);
    assert_eq!(score::gate(false, 90.0, Some(10.0), 3), GateState::Disabled);
    assert_eq!(score::gate(true, 90.0, None, 0), GateState::Pending);
}

/// Hand-computed roll-up: app A (3 workloads) 80 %, app B (1 workload) 40 % → (240 + 40) / 4 = 70 %.
#[test]
fn roll_up_weighted_by_workloads() {
    let (s, w) = roll_up([(3.0, Some(80.0)), (1.0, Some(40.0)), (5.0, None)]);
    assert!(close(s.unwrap(), 70.0));
    assert!(close(w, 4.0));
    assert_eq!(roll_up([]), (None, 0.0));
}

/// The whole chain: an Environment with a 1-workload app at 94.32 (Harbor fails, enforcing) and
/// a 2-workload app at 100 → Environment (94.32 + 200) / 3 = 98.11, gate fails on Harbor; a second
/// Organization at 50 % with 1 workload → Sovereign (294.32 + 50) / 4 = 86.08.
#[test]
fn documents_roll_up_to_the_sovereign() {
    let mut a = Aggregator::new(ComplianceConfig::default());
    for r in sample("web", &["harbor-proxy"], &["resource-limits"]) {
        a.ingest(r, 0);
    }
    for w in ["api", "worker"] {
        for mut r in sample(w, &[], &[]) {
            r.app = app("acme", "prod", "billing");
            a.ingest(r, 0);
        }
    }
    a.ingest(
        row_in(app("globex", "dev", "x"), "probes", "x", Outcome::Pass),
        0,
    );
    a.ingest(
        row_in(
            app("globex", "dev", "x"),
            "resource-limits",
            "x",
            Outcome::Fail,
        ),
        0,
    );
    // Probes (5) pass, limits (4) fail: 5 / 9 = 55.56 %.
    let docs = a.documents();
    let keys: Vec<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "eu",
            "eu.acme",
            "eu.acme.prod",
            "eu.acme.prod.billing",
            "eu.acme.prod.shop",
            "eu.globex",
            "eu.globex.dev",
            "eu.globex.dev.x"
        ]
    );
    assert_eq!(docs["eu.acme.prod.shop"].score, Some(94.32));
    assert_eq!(docs["eu.acme.prod.billing"].score, Some(100.0));
    let env = &docs["eu.acme.prod"];
    assert_eq!(env.score, Some(98.11));
    assert_eq!(env.gate.as_ref().unwrap().state, GateState::Fail);
    assert_eq!(env.failing_enforcing.len(), 1);
    assert_eq!(env.workloads, 3);
    assert_eq!(docs["eu.globex.dev.x"].score, Some(55.56));
    let want = (8300.0 / 88.0 + 200.0 + 500.0 / 9.0) / 4.0;
    assert_eq!(docs["eu"].score, Some(score::publish_round(want)));
    assert_eq!(docs["eu"].applications, 3);
}

#[test]
fn published_diff_writes_only_changes() {
    let mut a = Aggregator::new(ComplianceConfig::default());
    a.ingest(row("probes", "web", Outcome::Pass), 0);
    let mut p = Published::default();
    let first = p.diff(&a.publication().entries);
    assert_eq!(first.len(), 4, "app, env, org, sovereign");
    // A heartbeat (same outcome and evidence) changes nothing.
    a.ingest(row("probes", "web", Outcome::Pass), 10);
    assert!(!a.is_dirty());
    assert!(p.diff(&a.publication().entries).is_empty());
    a.ingest(row("probes", "web", Outcome::Fail), 20);
    let changed: Vec<String> = p
        .diff(&a.publication().entries)
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(changed.len(), 4);
    // The application disappears: its keys are deleted.
    a.replace_source(Source::Evaluator, Vec::new(), 30);
    let gone = p.diff(&a.publication().entries);
    assert!(gone.iter().all(|c| c.1.is_none()) && gone.len() == 4);
}

#[test]
fn expiry_drops_vanished_workloads() {
    let mut a = Aggregator::new(ComplianceConfig::default());
    let mut r = row("probes", "web", Outcome::Pass);
    r.source = Source::Signal;
    a.ingest(r.clone(), 1_000);
    r.workload.name = "api".into();
    r.outcome = Outcome::Fail;
    a.ingest(r, 5_000);
    assert_eq!(a.documents()["eu.acme.prod.shop"].score, Some(50.0));
    a.expire(Source::Signal, 2_000);
    assert_eq!(a.rows(), 1);
    assert_eq!(a.documents()["eu.acme.prod.shop"].score, Some(0.0));
}

fn checks_strategy() -> impl Strategy<Value = Vec<(f64, Option<f64>)>> {
    prop::collection::vec((0.0..100.0_f64, prop::option::of(0.0..=1.0_f64)), 0..20)
}

proptest! {
    #[test]
    fn na_never_changes_a_score(mut checks in checks_strategy(), extra in prop::collection::vec(0.0..100.0_f64, 1..5), at in any::<prop::sample::Index>()) {
        let before = weighted_score(checks.clone());
        for w in extra {
            let i = if checks.is_empty() { 0 } else { at.index(checks.len() + 1) };
            checks.insert(i, (w, None));
        }
        prop_assert_eq!(before, weighted_score(checks));
    }

    #[test]
    fn weights_normalise(checks in checks_strategy(), k in 0.01..1000.0_f64) {
        let a = weighted_score(checks.clone());
        let b = weighted_score(checks.iter().map(|(w, r)| (w * k, *r)));
        match (a, b) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-6, "{a} vs {b}"),
            (a, b) => prop_assert_eq!(a.is_some(), b.is_some()),
        }
        if let Some(a) = a {
            prop_assert!((0.0..=100.0 + 1e-9).contains(&a));
        }
    }

    /// Turning any failing row into a passing one never lowers the score; n-a rows added for
    /// any check leave it unchanged (at the row level, through `score_app`).
    #[test]
    fn monotonic_in_passing_rows(outcomes in prop::collection::vec((0usize..14, 0usize..4, 0u8..3), 1..60), flip in any::<prop::sample::Index>()) {
        let catalog = Catalog::catalyst();
        let mk = |v: &[(usize, usize, u8)]| -> Vec<Row> {
            let mut m = std::collections::BTreeMap::new();
            for (c, w, o) in v {
                let o = match o { 0 => Outcome::Pass, 1 => Outcome::Fail, _ => Outcome::NotApplicable };
                m.insert((*c, *w), o);
            }
            m.into_iter().map(|((c, w), o)| row(CATALYST_DEFAULTS[c].0, &format!("w{w}"), o)).collect()
        };
        let rows = mk(&outcomes);
        let before = score::score_app(&rows, &catalog, None, 90.0, 10).score;
        let fails: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| r.outcome == Outcome::Fail).map(|(i, _)| i).collect();
        if !fails.is_empty() {
            let mut better = rows.clone();
            better[fails[flip.index(fails.len())]].outcome = Outcome::Pass;
            let after = score::score_app(&better, &catalog, None, 90.0, 10).score;
            prop_assert!(after.unwrap() + 1e-9 >= before.unwrap(), "{before:?} → {after:?}");
        }
        let mut with_na = rows.clone();
        with_na.push(row("some-new-check", "w9", Outcome::NotApplicable));
        with_na.push(row("probes", "w-na", Outcome::NotApplicable));
        prop_assert_eq!(before, score::score_app(&with_na, &catalog, None, 90.0, 10).score);
    }

    /// The fix list reaches the target and no smaller set of checks does (brute force).
    #[test]
    fn fix_list_is_minimal(checks in prop::collection::vec((1.0..50.0_f64, 0.0..=1.0_f64), 1..9), target in 0.0..=100.0_f64) {
        let input: Vec<(String, f64, f64, Mode)> = checks.iter().enumerate().map(|(i, (w, r))| (format!("c{i}"), *w, *r, Mode::Permissive)).collect();
        let f = fix_list(&input, target);
        let den: f64 = checks.iter().map(|c| c.0).sum();
        let score_with = |fixed: &[usize]| 100.0 * checks.iter().enumerate().map(|(i, (w, r))| w * if fixed.contains(&i) { 1.0 } else { *r }).sum::<f64>() / den;
        let chosen: Vec<usize> = f.steps.iter().map(|s| s.check[1..].parse().unwrap()).collect();
        prop_assert!(f.reachable);
        prop_assert!(score_with(&chosen) + 1e-6 >= target);
        let n = checks.len();
        for mask in 0u32..(1 << n) {
            let set: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            if set.len() < chosen.len() {
                prop_assert!(score_with(&set) + 1e-9 < target, "smaller set {set:?} reaches {target}");
            }
        }
        let mut last = f64::INFINITY;
        for s in &f.steps {
            prop_assert!(s.gain <= last + 1e-9, "gains in decreasing order");
            last = s.gain;
        }
    }
}

/// The shell publishes cached application bytes: they equal the full documents, serialised.
#[test]
fn publication_equals_the_full_documents() {
    let mut a = Aggregator::new(ComplianceConfig::default());
    for r in sample(
        "web",
        &["harbor-proxy", "pdb-present"],
        &["resource-limits"],
    ) {
        a.ingest(r, 0);
    }
    a.ingest(
        row_in(app("globex", "dev", "x"), "probes", "x", Outcome::Fail),
        0,
    );
    let p = a.publication();
    // A second pass after one change re-serialises that application only; still equal.
    a.ingest(row("probes", "web", Outcome::Fail), 1);
    let p2 = a.publication();
    let docs = a.documents();
    assert_eq!(p.entries.len(), docs.len());
    for (k, d) in &docs {
        assert_eq!(
            p2.entries[k].bytes,
            serde_json::to_vec(d).unwrap(),
            "{k} differs from its full document"
        );
    }
    assert_ne!(
        p.entries["eu.acme.prod.shop"].bytes,
        p2.entries["eu.acme.prod.shop"].bytes
    );
    assert_eq!(
        p.entries["eu.globex.dev.x"].bytes,
        p2.entries["eu.globex.dev.x"].bytes
    );
}

/// The store keeps evidence of failing rows (shown in documents) and drops it for passing rows:
/// a passing row whose evidence changes re-scores nothing, a failing one does.
#[test]
fn evidence_kept_for_failures_only() {
    let mut a = Aggregator::new(ComplianceConfig::default());
    let mut r = row("probes", "web", Outcome::Pass);
    a.ingest(r.clone(), 0);
    let _ = a.publication();
    r.evidence = json!({"reason": "other"});
    a.ingest(r.clone(), 1);
    assert!(!a.is_dirty(), "evidence of a passing row is not kept");
    r.outcome = Outcome::Fail;
    a.ingest(r.clone(), 2);
    assert!(a.is_dirty());
    let _ = a.publication();
    r.evidence = json!({"reason": "third"});
    a.ingest(r, 3);
    assert!(
        a.is_dirty(),
        "evidence of a failing row is shown, so it counts"
    );
    let doc = &a.documents()["eu.acme.prod.shop"];
    let probes = &doc.checks.as_ref().unwrap()[0];
    assert_eq!(probes.failures[0].evidence, json!({"reason": "third"}));
}
