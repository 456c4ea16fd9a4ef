//! Compliance inputs → rows → scores: the agent's signal payloads, catalyst-dns health events,
//! Kyverno / `OpenReports` reports and the own evaluators over the sample workloads in
//! deploy/examples/compliance, checked against hand-computed scores.

use std::path::{Path, PathBuf};

use catalyst_controllers::{
    compliance::{
        Aggregator, ComplianceConfig, HealthTarget, Mode, Outcome, Source, Tenants,
        inputs::{self, file_rows, health_row, signal_row},
        score::GateState,
    },
    standalone,
    validate::Validator,
};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/compliance")
}

fn tenants() -> Tenants {
    let (i, errors) = standalone::load(
        &example().join("tenants"),
        &Validator::for_catalyst(),
        &standalone::Inputs::default(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    Tenants::from_resources(&i.organizations, &i.environments, &i.environment_policies)
}

/// The example from docs/signals.md, as the agent publishes it.
const SIGNAL: &str = r#"{"schema":"catalyst.signal/v1","check":"policy-drops","result":"fail",
 "subject":{"organization":"acme","environment":"prod","application":"shop","namespace":"shop","pod":"web-1","interface":"cat-web","endpoint_id":12,"identity":257},
 "evidence":{"reason":"policy-drops","window_ms":10000,"flows":42,"ingress_drops":3,"egress_drops":0,"deny_rule_drops":1,"audited":0},
 "observed_at":"2026-11-26T07:02:20.000131902Z","node":"lab-node","cluster":"default","policy_revision":4,"trigger":"window"}"#;

#[test]
fn signal_payload_becomes_a_row_in_its_sovereign() {
    let t = tenants();
    let r = signal_row(
        "catalyst.signals.acme.prod.shop",
        SIGNAL.as_bytes(),
        &t,
        "default",
    )
    .unwrap();
    assert_eq!(r.check, "policy-drops");
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(
        r.app.kv_key(),
        "eu.acme.prod.shop",
        "Sovereign from the Organization"
    );
    assert_eq!(r.workload.to_string(), "Pod/shop/web-1");
    assert_eq!(r.evidence["ingress_drops"], 3);
    assert_eq!(r.source, Source::Signal);
    // An Organization without a resource lands in the default Sovereign.
    let other = SIGNAL.replace("\"acme\"", "\"globex\"");
    let r = signal_row("s", other.as_bytes(), &t, "default").unwrap();
    assert_eq!(r.app.kv_key(), "default.globex.prod.shop");
}

#[test]
fn bad_signals_name_the_input_and_position() {
    let t = tenants();
    let e = signal_row(
        "catalyst.signals.a.b.c",
        b"{\"schema\":\"catalyst.signal/v1\",\"check\":1}",
        &t,
        "d",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("signal on `catalyst.signals.a.b.c`: check: invalid type"),
        "{e}"
    );
    let bad_result = SIGNAL.replace("\"result\":\"fail\"", "\"result\":\"maybe\"");
    let e = signal_row("x", bad_result.as_bytes(), &t, "d").unwrap_err();
    assert!(
        e.message.starts_with("result: unknown variant `maybe`"),
        "{e}"
    );
    let v2 = SIGNAL.replace("catalyst.signal/v1", "catalyst.signal/v2");
    let e = signal_row("x", v2.as_bytes(), &t, "d").unwrap_err();
    assert!(e.message.contains("catalyst.signal/v2"), "{e}");
    let e = signal_row("x", b"{not json", &t, "d").unwrap_err();
    assert!(e.message.contains("line 1 column 2"), "{e}");
}

#[test]
fn health_events_score_the_application_behind_the_target() {
    let t = tenants();
    let targets = vec![HealthTarget {
        zone: "example.org".into(),
        target: "192.0.2.1:443".into(),
        organization: "acme".into(),
        environment: "prod".into(),
        application: "shop".into(),
    }];
    // What catalyst-dns publishes (dns/src/health HealthEvent).
    let down = br#"{"zone":"example.org","target":"192.0.2.1:443","target_token":"192_0_2_1_443","status":"down","previous":"up","reason":"connection refused","at":1764835200}"#;
    let r = health_row(
        "catalyst.health.example_org.192_0_2_1_443",
        down,
        &targets,
        &t,
        "d",
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.check, "failover-target-healthy");
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(r.app.kv_key(), "eu.acme.prod.shop");
    assert_eq!(r.evidence["reason"], "connection refused");
    assert_eq!(r.observed_at, "2025-12-04T08:00:00Z");
    let other = String::from_utf8(down.to_vec())
        .unwrap()
        .replace("192.0.2.1", "192.0.2.9");
    assert!(
        health_row("s", other.as_bytes(), &targets, &t, "d")
            .unwrap()
            .is_none()
    );
    let bad = String::from_utf8(down.to_vec())
        .unwrap()
        .replace("\"down\"", "\"pending\"");
    let e = health_row("s", bad.as_bytes(), &targets, &t, "d").unwrap_err();
    assert!(e.to_string().contains("status: `pending`"), "{e}");
}

#[test]
fn reports_fold_rules_per_policy_and_resource() {
    let t = tenants();
    let (docs, errors) = inputs::read_documents(&example().join("reports"));
    assert!(errors.is_empty(), "{errors:?}");
    let mut rows = Vec::new();
    for (label, d) in &docs {
        rows.extend(inputs::report_rows(label, d, &t, "default").unwrap());
    }
    let find = |check: &str, name: &str| {
        rows.iter()
            .find(|r| r.check == check && r.workload.name == name)
            .unwrap_or_else(|| panic!("{check} {name}"))
    };
    assert_eq!(
        find("require-labels", "web").outcome,
        Outcome::Fail,
        "one failing rule fails the policy"
    );
    assert_eq!(
        find("require-labels", "web").evidence["failing_rules"][0],
        "check-team: fail"
    );
    assert_eq!(
        find("disallow-privilege-escalation", "web").outcome,
        Outcome::Pass
    );
    assert_eq!(
        find("disallow-privilege-escalation", "cache").outcome,
        Outcome::Fail
    );
    assert_eq!(
        find("require-labels", "cache").outcome,
        Outcome::NotApplicable,
        "skip → n-a"
    );
    assert!(rows.iter().all(|r| r.app.kv_key() == "eu.acme.prod.shop"));
    // Bad reports name the document and the result.
    let bad: serde_json::Value = serde_json::json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "x", "namespace": "shop"},
        "results": [{"policy": "p", "result": "pass", "resources": [{"kind": "Pod", "name": "a"}]},
                    {"policy": "p", "result": "bogus"}]
    });
    let e = inputs::report_rows("r.yaml document 3", &bad, &t, "d").unwrap_err();
    assert_eq!(
        e.to_string(),
        "r.yaml document 3: results[1].result: `bogus` is not pass, fail, warn, error or skip"
    );
}

#[test]
fn evaluators_on_the_sample_workloads() {
    use Outcome::{Fail, NotApplicable as Na, Pass};
    let t = tenants();
    let cfg = ComplianceConfig::default();
    let (eval, _, errors) = file_rows(
        None,
        Some(&example().join("workloads")),
        &cfg.evaluators,
        &t,
        "default",
    );
    assert!(errors.is_empty(), "{errors:?}");
    let get = |check: &str, name: &str| {
        eval.iter()
            .find(|r| r.check == check && r.workload.name == name)
            .unwrap_or_else(|| panic!("{check} {name}"))
            .outcome
    };
    let table = [
        ("multi-replica", Pass, Fail, Na),
        ("pdb-present", Pass, Fail, Na),
        ("topology-spread", Pass, Fail, Na),
        ("probes", Pass, Fail, Pass),
        ("resource-requests", Pass, Pass, Pass),
        ("resource-limits", Pass, Fail, Pass),
        ("l7-mtls-required", Fail, Fail, Pass),
        ("flux-managed", Pass, Fail, Pass),
        ("harbor-proxy", Pass, Fail, Pass),
        ("image-tag-pinned", Pass, Fail, Pass),
        ("prometheus-scrape", Pass, Fail, Pass),
        ("network-policy-present", Pass, Pass, Fail),
        ("non-root-read-only", Pass, Fail, Pass),
        ("secret-not-in-env", Pass, Fail, Pass),
    ];
    for (check, web, cache, shipper) in table {
        assert_eq!(get(check, "web"), web, "{check} web");
        assert_eq!(get(check, "cache"), cache, "{check} cache");
        assert_eq!(get(check, "log-shipper"), shipper, "{check} log-shipper");
    }
    assert_eq!(eval.len(), 14 * 3);
    let shipper = eval
        .iter()
        .find(|r| r.workload.name == "log-shipper")
        .unwrap();
    assert_eq!(
        shipper.app.kv_key(),
        "eu.acme.prod.billing",
        "application from the Environment's namespace"
    );
    let e = inputs::Objects::default()
        .add("w.yaml document 1", &serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "three"}}))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("w.yaml document 1: spec.replicas: invalid type"),
        "{e}"
    );
}

/// Hand-computed (docs/compliance.md, "worked example"): the shop scores 55.5 / 99 = 56.06 %
/// under `prod-rules` (mTLS weight 0, scrape enforcing), billing 52 / 57 = 91.23 %, the
/// Environment (2 · 56.06 + 91.23) / 3, and the gate fails on five enforcing checks.
#[test]
fn sample_scores_hand_computed() {
    let t = tenants();
    let cfg = ComplianceConfig {
        reports: Some(example().join("reports")),
        ..ComplianceConfig::default()
    };
    let mut a = Aggregator::new(cfg.clone());
    a.set_tenants(t.clone());
    let (eval, reports, errors) = file_rows(
        cfg.reports.as_deref(),
        Some(&example().join("workloads")),
        &cfg.evaluators,
        &t,
        "default",
    );
    assert!(errors.is_empty());
    a.replace_source(Source::Evaluator, eval, 0);
    a.replace_source(Source::PolicyReport, reports, 0);
    let docs = a.documents();
    let shop = &docs["eu.acme.prod.shop"];
    assert_eq!(shop.score, Some(56.06));
    assert_eq!(shop.workloads, 2);
    let enforcing: Vec<&str> = shop
        .failing_enforcing
        .iter()
        .map(|f| f.check.as_str())
        .collect();
    assert_eq!(
        enforcing,
        [
            "flux-managed",
            "harbor-proxy",
            "image-tag-pinned",
            "probes",
            "prometheus-scrape"
        ]
    );
    let scrape = shop
        .checks
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.check == "prometheus-scrape")
        .unwrap();
    assert_eq!(scrape.mode, Mode::Enforcing, "EnvironmentPolicy override");
    let fix: Vec<(&str, f64)> = shop
        .fix
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| (s.check.as_str(), s.score_after))
        .collect();
    assert_eq!(
        fix,
        [
            ("multi-replica", 63.64),
            ("pdb-present", 71.21),
            ("flux-managed", 76.26),
            ("topology-spread", 81.31),
            ("harbor-proxy", 83.84),
            ("image-tag-pinned", 86.36),
            ("non-root-read-only", 88.89),
            ("probes", 91.41),
        ]
    );
    assert_eq!(docs["eu.acme.prod.billing"].score, Some(91.23));
    let env = &docs["eu.acme.prod"];
    let want: f64 = (2.0 * 55.5 / 99.0 + 52.0 / 57.0) / 3.0 * 100.0;
    assert_eq!(env.score, Some((want * 100.0).round() / 100.0));
    let gate = env.gate.as_ref().unwrap();
    assert_eq!(
        (gate.state, gate.minimum_score, gate.policy.as_deref()),
        (GateState::Fail, 80.0, Some("prod-rules"))
    );
    assert_eq!(docs["eu"].score, env.score);
}

/// Every document the sample produces (all four levels) is valid against the committed
/// `catalyst.score/v1` JSON Schema, and the schema rejects a malformed one.
#[test]
fn documents_match_the_committed_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/catalyst.score.v1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap();
    let t = tenants();
    let cfg = ComplianceConfig::default();
    let mut a = Aggregator::new(cfg.clone());
    a.set_tenants(t.clone());
    let (eval, reports, _) = file_rows(
        Some(&example().join("reports")),
        Some(&example().join("workloads")),
        &cfg.evaluators,
        &t,
        "default",
    );
    a.replace_source(Source::Evaluator, eval, 0);
    a.replace_source(Source::PolicyReport, reports, 0);
    let docs = a.documents();
    assert_eq!(docs.len(), 5);
    for (k, d) in &docs {
        let json = serde_json::to_value(d).unwrap();
        let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{k}: {errors:?}");
    }
    let mut bad = serde_json::to_value(&docs["eu.acme.prod"]).unwrap();
    bad["score"] = serde_json::json!(101);
    assert!(!v.is_valid(&bad));
}

/// The sample configuration loads, with its paths resolved against the file.
#[test]
fn sample_config_loads() {
    let cfg =
        catalyst_controllers::config::Config::load(&example().join("controllers.yaml")).unwrap();
    assert!(cfg.compliance.enabled);
    assert_eq!(cfg.compliance.workloads, Some(example().join("workloads")));
    assert_eq!(cfg.compliance.health_targets.len(), 1);
    assert!(cfg.compliance.nats.is_none());
    let bad = std::env::temp_dir().join(format!("compliance-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "standalone: {input: a, output: b}\ncompliance:\n  enabled: true\n  checks:\n    probes: {weight: 5, mode: sometimes}\n").unwrap();
    let e = catalyst_controllers::config::Config::load(&bad)
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_file(&bad);
    assert!(
        e.contains("compliance.checks.probes.mode: unknown variant `sometimes`"),
        "{e}"
    );
}
