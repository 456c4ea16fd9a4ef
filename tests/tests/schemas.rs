//! The JSON payloads that cross programs over NATS (DESIGN.md §4.5) against their committed JSON
//! Schemas (`docs/schemas/`): what each producer really emits — built with the producing crate's
//! own types and serialisation — must be valid, and each consumer must accept schema-valid
//! examples and refuse the schema-invalid ones it is meant to refuse.
//!
//! Adding a schema is one entry of [`contracts`]; a schema file without an entry fails
//! [`every_schema_has_a_contract`].

use std::{path::Path, sync::Arc, time::Instant};

use catalyst_agent::{
    config::SignalsConfig,
    flow::PolicyRefOut,
    signals::{Engine, FlowCounts, Inputs, Subject, Trigger, Workload},
};
use catalyst_controllers::compliance::{
    Aggregator, ComplianceConfig, HealthTarget, Outcome, Row, Source, Tenants, Workload as Wl,
    inputs,
};
use catalyst_controllers::continuum::{lease, machine, wire};
use catalyst_policy::datapath::{EP_F_AUDIT, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED};

/// One payload contract.
struct Contract {
    /// File under `docs/schemas/`.
    schema: &'static str,
    /// Who produces it and who reads it (for messages).
    between: &'static str,
    /// What the producers emit: (label, bytes), from the producing crates' own code.
    produced: fn() -> Vec<(String, Vec<u8>)>,
    /// Schema-valid examples: every consumer must accept them.
    valid: &'static [&'static str],
    /// Schema-invalid examples, and whether the consumer must refuse them (a tolerant reader
    /// may accept, e.g., an unknown field).
    invalid: &'static [(&'static str, bool)],
    /// The consumer's parser: `Ok` when it accepts the payload.
    consumer: Option<Consumer>,
}

/// A consumer's parser: `Ok` when it accepts the payload.
type Consumer = fn(&[u8]) -> Result<(), String>;

#[expect(
    clippy::too_many_lines,
    reason = "the table: one entry per schema, read top to bottom"
)]
fn contracts() -> Vec<Contract> {
    vec![
        Contract {
            schema: "catalyst.signal.v1.json",
            between: "catalyst-agent → catalyst-controllers (compliance)",
            produced: agent_signals,
            valid: &[
                r#"{"schema":"catalyst.signal/v1","check":"policy-drops","result":"fail","subject":{"organization":"acme","environment":"prod","application":"shop","namespace":"shop","pod":"web-1","interface":"cat-web","endpoint_id":12,"identity":257},"evidence":{"reason":"policy-drops","window_ms":10000,"flows":42,"ingress_drops":3,"egress_drops":0,"deny_rule_drops":1,"audited":0},"observed_at":"2026-11-26T07:02:20.000131902Z","node":"lab-node","cluster":"default","policy_revision":4,"trigger":"window"}"#,
                r#"{"schema":"catalyst.signal/v1","check":"labels-complete","result":"n-a","subject":{"organization":"_","environment":"_","application":"_","namespace":"x","pod":"p","interface":"i","endpoint_id":0,"identity":0},"evidence":{"reason":"missing-labels","missing_labels":["openova.io/organization"],"future_field":1},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":0,"trigger":"heartbeat"}"#,
            ],
            invalid: &[
                (
                    r#"{"schema":"catalyst.signal/v1","check":"x","result":"maybe","subject":{"organization":"a","environment":"b","application":"c","namespace":"n","pod":"p","interface":"i","endpoint_id":1,"identity":1},"evidence":{},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.signal/v2","check":"x","result":"pass","subject":{"organization":"a","environment":"b","application":"c","namespace":"n","pod":"p","interface":"i","endpoint_id":1,"identity":1},"evidence":{},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.signal/v1","check":"x","result":"pass","evidence":{},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.signal/v1","check":"x","result":"pass","subject":{"organization":"a","environment":"b","application":"c","namespace":"n","pod":1,"interface":"i","endpoint_id":1,"identity":1},"evidence":{},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start"}"#,
                    true,
                ),
                // An unknown top-level field: the schema refuses it (producers must bump the
                // schema), the aggregator reads on (tolerant reader).
                (
                    r#"{"schema":"catalyst.signal/v1","check":"x","result":"pass","subject":{"organization":"a","environment":"b","application":"c","namespace":"n","pod":"p","interface":"i","endpoint_id":1,"identity":1},"evidence":{},"observed_at":"2026-11-26T07:02:20Z","node":"n","cluster":"c","policy_revision":1,"trigger":"start","extra":true}"#,
                    false,
                ),
            ],
            consumer: Some(|b| {
                inputs::signal_row("catalyst.signals.a.b.c", b, &Tenants::default(), "default")
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Contract {
            schema: "catalyst.health.v1.json",
            between: "catalyst-dns → catalyst-controllers (compliance)",
            produced: dns_health_events,
            valid: &[
                r#"{"zone":"example.org","target":"192.0.2.1:443","target_token":"192_0_2_1_443","status":"down","previous":"up","reason":"connection refused","at":1795651200}"#,
                r#"{"zone":"example.org.","target":"192.0.2.1:443","target_token":"192_0_2_1_443","status":"up","previous":"pending","reason":null,"at":0}"#,
            ],
            invalid: &[
                (
                    r#"{"zone":"example.org","target":"192.0.2.1:443","target_token":"t","status":"sideways","previous":"up","reason":null,"at":1}"#,
                    true,
                ),
                (
                    r#"{"zone":"example.org","target":"192.0.2.1:443","target_token":"t","status":"up","previous":"down","reason":null}"#,
                    true,
                ),
                (
                    r#"{"zone":"example.org","target":"192.0.2.1:443","target_token":"t","status":"up","previous":"down","reason":null,"at":-5}"#,
                    true,
                ),
                (
                    r#"{"zone":"example.org","target_token":"t","status":"up","previous":"down","reason":null,"at":5}"#,
                    true,
                ),
            ],
            consumer: Some(|b| {
                let targets = [HealthTarget {
                    zone: "example.org".into(),
                    target: "192.0.2.1:443".into(),
                    organization: "acme".into(),
                    environment: "prod".into(),
                    application: "shop".into(),
                }];
                match inputs::health_row(
                    "catalyst.health.example_org.t",
                    b,
                    &targets,
                    &Tenants::default(),
                    "default",
                ) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("event for an unconfigured target".into()),
                    Err(e) => Err(e.to_string()),
                }
            }),
        },
        Contract {
            schema: "catalyst.score.v1.json",
            between: "catalyst-controllers → KV policy-rollup, stream CATALYST_SCORES, dashboard",
            produced: controller_scores,
            valid: &[
                r#"{"schema":"catalyst.score/v1","level":"sovereign","key":"eu","sovereign":"eu","score":null,"weight":0,"applications":0,"workloads":0,"failing_enforcing":[]}"#,
            ],
            invalid: &[(
                r#"{"schema":"catalyst.score/v1","level":"sovereign","key":"eu","sovereign":"eu","score":101,"weight":1,"applications":1,"workloads":1,"failing_enforcing":[]}"#,
                false,
            )],
            // Read by the dashboard (JavaScript, tested in headless Chromium by
            // controllers/tests/compliance_nats.rs) and by external trend views.
            consumer: None,
        },
        Contract {
            schema: "dns-failover.v1.json",
            between: "Continuum (controllers) → KV dns-failover → catalyst-dns",
            produced: continuum_failover_values,
            valid: &[
                r#"{"active_region":"eu-west","epoch":3,"lease_holder":"catalyst-controllers-0"}"#,
                r#"{"active_region":"us","epoch":0,"lease_holder":null}"#,
                r#"{"active_region":"us","epoch":7}"#,
            ],
            invalid: &[
                (r#"{"epoch":3}"#, true),
                (r#"{"active_region":"eu","epoch":-1}"#, true),
                (r#"{"active_region":"","epoch":1}"#, true),
                (r#"["eu"]"#, true),
            ],
            consumer: Some(|b| {
                catalyst_dns::failover::parse_record(b)
                    .map(|_| ())
                    .ok_or_else(|| "refused".into())
            }),
        },
        Contract {
            schema: "catalyst.lease.v1.json",
            between: "Continuum controllers ↔ KV continuum-leases (every region's controller reads and CASes it)",
            produced: continuum_leases,
            valid: &[
                r#"{"schema":"catalyst.lease/v1","continuum":"shop/orders","holder":"ctrl-a","region":"a","ttl_seconds":30,"written_at":"2026-12-05T07:00:00Z"}"#,
                r#"{"schema":"catalyst.lease/v1","continuum":"shop/orders","holder":null,"region":"b","epoch":12,"ttl_seconds":30,"written_at":"2026-12-05T07:00:00.5Z"}"#,
            ],
            invalid: &[
                // No `holder`: the schema refuses it; serde reads a missing Option as null
                // (released), which only lets the named region take the lease at once.
                (
                    r#"{"schema":"catalyst.lease/v1","continuum":"shop/orders","region":"a","ttl_seconds":30,"written_at":"2026-12-05T07:00:00Z"}"#,
                    false,
                ),
                (
                    r#"{"schema":"catalyst.lease/v1","continuum":"shop/orders","holder":"x","region":"a","epoch":-2,"ttl_seconds":30,"written_at":"2026-12-05T07:00:00Z"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.lease/v1","continuum":"shop/orders","holder":"x","region":"a","ttl_seconds":"30","written_at":"2026-12-05T07:00:00Z"}"#,
                    true,
                ),
            ],
            consumer: Some(|b| {
                serde_json::from_slice::<lease::LeaseRecord>(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Contract {
            schema: "catalyst.continuum-state.v1.json",
            between: "Continuum controllers ↔ KV continuum-state (the lease holder writes, a new holder resumes)",
            produced: continuum_states,
            valid: &[
                r#"{"schema":"catalyst.continuum-state/v1","active_region":"a","epoch":0,"spec_primary":"a"}"#,
                r#"{"schema":"catalyst.continuum-state/v1","active_region":"a","epoch":5,"spec_primary":"a","in_progress":{"from":"a","to":"b","reason":"manual","step":"Promote","epoch":5,"started_ms":1,"demoted_lsn":"0/3000060"},"history":[]}"#,
            ],
            invalid: &[
                (
                    r#"{"schema":"catalyst.continuum-state/v1","active_region":"a","epoch":0,"spec_primary":"a","in_progress":{"from":"a","to":"b","reason":"manual","step":"Dance","epoch":5,"started_ms":1}}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.continuum-state/v1","epoch":0,"spec_primary":"a"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.continuum-state/v1","active_region":"a","epoch":0,"spec_primary":"a","in_progress":{"from":"a","to":"b","reason":"bored","step":"Audit","epoch":5,"started_ms":1}}"#,
                    true,
                ),
            ],
            consumer: Some(|b| {
                serde_json::from_slice::<machine::State>(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
        Contract {
            schema: "catalyst.audit.v1.json",
            between: "Continuum (controllers) → NATS catalyst.audit.continuum → audit log consumers",
            produced: continuum_audits,
            valid: &[
                r#"{"schema":"catalyst.audit/v1","kind":"continuum","continuum":"shop/orders","who":"ctrl-a","epoch":9,"action":"switchover","reason":"primary-lost","before":{"active_region":"a"},"after":{"active_region":"b"},"duration_ms":4100,"write_gap_ms":0,"at":"2026-12-05T07:00:00Z"}"#,
            ],
            invalid: &[
                (
                    r#"{"schema":"catalyst.audit/v1","kind":"continuum","continuum":"shop/orders","who":"ctrl-a","action":"switchover","reason":"manual","before":{"active_region":"a"},"after":{"active_region":"b"},"duration_ms":1,"write_gap_ms":0,"at":"2026-12-05T07:00:00Z"}"#,
                    true,
                ),
                (
                    r#"{"schema":"catalyst.audit/v1","kind":"continuum","continuum":"shop/orders","who":"ctrl-a","epoch":9,"action":"switchover","reason":"manual","before":{"active_region":"a"},"after":{"active_region":"b"},"duration_ms":-1,"write_gap_ms":0,"at":"2026-12-05T07:00:00Z"}"#,
                    true,
                ),
            ],
            consumer: Some(|b| {
                serde_json::from_slice::<wire::Audit>(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        },
    ]
}

/// Signals of the agent's engine for workloads in several enforcement states, at start and
/// after a window, serialised as the agent publishes them.
fn agent_signals() -> Vec<(String, Vec<u8>)> {
    let policy = |name: &str| PolicyRefOut {
        name: name.into(),
        namespace: "shop".into(),
        kind: "CiliumNetworkPolicy".into(),
    };
    let workloads = [
        0,
        EP_F_INGRESS_ENFORCED,
        EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED,
        EP_F_AUDIT,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, flags)| Workload {
        subject: Subject {
            organization: if i == 3 { "_".into() } else { "acme".into() },
            environment: "prod".into(),
            application: "shop".into(),
            namespace: "shop".into(),
            pod: format!("web-{i}"),
            interface: format!("cat{i}"),
            endpoint_id: u32::try_from(i).unwrap() + 1,
            identity: 300,
        },
        flags,
        missing_labels: if i == 3 {
            vec!["openova.io/organization"]
        } else {
            Vec::new()
        },
        ingress_policies: vec![policy("web-ingress")],
        egress_policies: vec![policy("web-egress")],
        world_allows: if i == 2 {
            vec![policy("allow-world")]
        } else {
            Vec::new()
        },
    })
    .collect();
    let mut engine = Engine::new(
        "n1",
        "c1",
        &SignalsConfig::default(),
        Arc::new(FlowCounts::default()),
    );
    engine.set_inputs(Arc::new(Inputs {
        workloads,
        global_audit: false,
        revision: 3,
    }));
    let t0 = Instant::now();
    let mut signals = engine.evaluate(Trigger::Start, t0, 1_795_651_200_123_456_789);
    engine.end_window(10_000);
    signals.extend(engine.evaluate(Trigger::Window, t0, 1_795_651_210_000_000_000));
    assert!(signals.len() > 28, "every check of every workload");
    signals
        .iter()
        .map(|s| {
            (
                format!("{} {} ({:?})", s.subject.pod, s.check, s.trigger),
                serde_json::to_vec(s).unwrap(),
            )
        })
        .collect()
}

/// Health transitions as catalyst-dns serialises them for NATS.
fn dns_health_events() -> Vec<(String, Vec<u8>)> {
    [
        ("up", "pending", None),
        ("down", "up", Some("connection refused".to_owned())),
        ("up", "down", None),
    ]
    .into_iter()
    .map(|(status, previous, reason)| {
        let e = catalyst_dns::health::HealthEvent {
            zone: "example.org".into(),
            target: "192.0.2.1:443".into(),
            target_token: "192_0_2_1_443".into(),
            status: status.into(),
            previous: previous.into(),
            reason,
            at: 1_795_651_200,
        };
        (
            format!("{previous} → {status}"),
            serde_json::to_vec(&e).unwrap(),
        )
    })
    .collect()
}

/// Every document (all four levels) the aggregator publishes for rows with failures, n-a and
/// an enforcing failure.
fn controller_scores() -> Vec<(String, Vec<u8>)> {
    let mut a = Aggregator::new(ComplianceConfig::default());
    for (i, (check, outcome)) in [
        ("probes", Outcome::Fail),
        ("multi-replica", Outcome::Pass),
        ("resource-limits", Outcome::NotApplicable),
        ("ingress-default-deny", Outcome::Fail),
        ("some-kyverno-policy", Outcome::Pass),
    ]
    .into_iter()
    .enumerate()
    {
        a.ingest(
            Row {
                check: check.into(),
                app: catalyst_controllers::compliance::AppKey {
                    sovereign: "eu".into(),
                    organization: "acme".into(),
                    environment: "prod".into(),
                    application: if i % 2 == 0 { "shop" } else { "billing" }.into(),
                },
                workload: Wl {
                    kind: "Deployment".into(),
                    namespace: "shop".into(),
                    name: format!("w{i}"),
                },
                outcome,
                evidence: serde_json::json!({"reason": check}),
                observed_at: "2026-12-04T10:00:00Z".into(),
                source: Source::Evaluator,
            },
            0,
        );
    }
    a.publication()
        .entries
        .into_iter()
        .map(|(k, e)| (k, e.bytes.to_vec()))
        .collect()
}

/// The lab's Continuum (two database regions and a witness-only third).
fn continuum_spec() -> catalyst_controllers::crd::ContinuumSpec {
    let c: catalyst_controllers::crd::Continuum = serde_norway::from_str(
        "apiVersion: dr.openova.io/v1\nkind: Continuum\nmetadata: {name: orders, namespace: shop}\nspec:\n  application: orders\n  primary: a\n  regions:\n    - {name: a, endpoints: ['192.0.2.1'], database: {kind: PostgreSQL, host: '192.0.2.1'}}\n    - {name: b, endpoints: ['192.0.2.2'], database: {kind: PostgreSQL, host: '192.0.2.2'}}\n  witness: {instances: ['192.0.2.53:53', '192.0.2.54:53', '192.0.2.55:53'], quorum: 2}\n  dns: {zone: example.org, group: orders, record: db.example.org, ttl: 5}\n",
    )
    .expect("the lab Continuum parses");
    c.spec
}

/// A lease as acquired, renewed and released, as the controller writes them.
fn continuum_leases() -> Vec<(String, Vec<u8>)> {
    let rec = |holder: Option<&str>, region: &str, epoch: Option<u64>| lease::LeaseRecord {
        schema: lease::LEASE_SCHEMA.into(),
        continuum: "shop/orders".into(),
        holder: holder.map(Into::into),
        region: region.into(),
        epoch,
        ttl_seconds: 30,
        written_at: jiff::Timestamp::now().to_string(),
    };
    [
        ("acquire", rec(Some("ctrl-a"), "a", None)),
        ("renew", rec(Some("ctrl-a"), "a", Some(7))),
        ("release", rec(None, "b", Some(7))),
    ]
    .into_iter()
    .map(|(l, r)| (l.into(), serde_json::to_vec(&r).expect("lease serialises")))
    .collect()
}

/// The state through every step of a switchover and after it, as the machine persists it.
fn continuum_states() -> Vec<(String, Vec<u8>)> {
    let spec = continuum_spec();
    let mut state = machine::State::initial(&spec);
    let mut out = vec![(
        "initial".into(),
        serde_json::to_vec(&state).expect("state serialises"),
    )];
    machine::begin(
        &mut state,
        &spec,
        "a".into(),
        "b".into(),
        machine::Reason::Manual,
        3,
        1_000,
    );
    let mut step = 0;
    while state.in_progress.is_some() {
        if let Some(sw) = state.in_progress.as_mut() {
            sw.demoted_lsn = Some("0/3000060".into());
            sw.writes_stopped_ms = Some(1_100);
            sw.old_reachable = Some(true);
        }
        out.push((
            format!("step {step}"),
            serde_json::to_vec(&state).expect("state serialises"),
        ));
        machine::complete(
            &mut state,
            3,
            1_500 + step,
            jiff::Timestamp::now().to_string(),
        );
        step += 1;
    }
    out.push((
        "after".into(),
        serde_json::to_vec(&state).expect("state serialises"),
    ));
    out
}

/// What the controller writes to `dns-failover` (initial and after a flip).
fn continuum_failover_values() -> Vec<(String, Vec<u8>)> {
    [
        wire::FailoverValue {
            active_region: "a".into(),
            epoch: 1,
            lease_holder: Some("ctrl-a".into()),
        },
        wire::FailoverValue {
            active_region: "b".into(),
            epoch: 9,
            lease_holder: None,
        },
    ]
    .iter()
    .map(|v| {
        (
            v.active_region.clone(),
            serde_json::to_vec(v).expect("value serialises"),
        )
    })
    .collect()
}

/// A switchover audit event as the controller publishes it.
fn continuum_audits() -> Vec<(String, Vec<u8>)> {
    let ev = wire::Audit {
        schema: wire::AUDIT_SCHEMA.into(),
        kind: "continuum".into(),
        continuum: "shop/orders".into(),
        who: "ctrl-a".into(),
        epoch: 9,
        action: "switchover".into(),
        reason: machine::Reason::PrimaryLost.as_str().into(),
        before: serde_json::json!({"active_region": "a"}),
        after: serde_json::json!({"active_region": "b"}),
        duration_ms: 4_100,
        write_gap_ms: 900,
        at: jiff::Timestamp::now().to_string(),
    };
    vec![(
        "switchover".into(),
        serde_json::to_vec(&ev).expect("audit serialises"),
    )]
}

fn schemas_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas")
}

fn validator(file: &str) -> jsonschema::Validator {
    let path = schemas_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()));
    let schema: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file}: not a valid JSON Schema: {e}"))
}

fn errors(v: &jsonschema::Validator, bytes: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(json) => v
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect(),
        Err(e) => vec![format!("not JSON: {e}")],
    }
}

#[test]
fn producers_emit_schema_valid_payloads() {
    for c in contracts() {
        let v = validator(c.schema);
        for (label, bytes) in (c.produced)() {
            let errs = errors(&v, &bytes);
            assert!(
                errs.is_empty(),
                "{} ({}): produced payload `{label}` is invalid: {errs:?}\n{}",
                c.schema,
                c.between,
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

#[test]
fn consumers_accept_valid_and_refuse_invalid_payloads() {
    for c in contracts() {
        let v = validator(c.schema);
        for (i, ex) in c.valid.iter().enumerate() {
            let errs = errors(&v, ex.as_bytes());
            assert!(
                errs.is_empty(),
                "{}: valid example {i} is not: {errs:?}",
                c.schema
            );
            if let Some(consume) = c.consumer {
                consume(ex.as_bytes()).unwrap_or_else(|e| {
                    panic!(
                        "{} ({}): consumer refuses valid example {i}: {e}",
                        c.schema, c.between
                    )
                });
            }
        }
        for (i, (ex, refused)) in c.invalid.iter().enumerate() {
            assert!(
                !errors(&v, ex.as_bytes()).is_empty(),
                "{}: invalid example {i} passes the schema",
                c.schema
            );
            if let (Some(consume), true) = (c.consumer, refused) {
                assert!(
                    consume(ex.as_bytes()).is_err(),
                    "{} ({}): consumer accepts invalid example {i}: {ex}",
                    c.schema,
                    c.between
                );
            }
        }
    }
}

/// The producers' payloads are also what the consumers accept (the round trip between the
/// programs, not only each side against the schema).
#[test]
fn consumers_accept_what_producers_emit() {
    for c in contracts() {
        let Some(consume) = c.consumer else { continue };
        for (label, bytes) in (c.produced)() {
            consume(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{} ({}): consumer refuses produced `{label}`: {e}",
                    c.schema, c.between
                )
            });
        }
    }
}

#[test]
fn every_schema_has_a_contract() {
    let listed: Vec<&str> = contracts().iter().map(|c| c.schema).collect();
    for e in std::fs::read_dir(schemas_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if Path::new(&name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            assert!(
                listed.contains(&name.as_str()),
                "docs/schemas/{name} has no entry in tests/tests/schemas.rs contracts()"
            );
        }
    }
}
