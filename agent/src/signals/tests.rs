use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use catalyst_policy::{
    CompileInput, Endpoint, LabelSet, PolicySet, compile,
    datapath::{
        DIR_EGRESS, DIR_INGRESS, DROP_POLICY_DENIED, DROP_POLICY_DENY, EP_F_AUDIT,
        EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED, FlowEvent, VERDICT_AUDIT, VERDICT_DROPPED,
        VERDICT_FORWARDED,
    },
    labels::SOURCE_K8S,
};

use super::*;
use crate::flow::PolicyRefOut;

fn policy(name: &str) -> PolicyRefOut {
    PolicyRefOut {
        name: name.into(),
        namespace: "shop".into(),
        kind: "CiliumNetworkPolicy".into(),
    }
}

fn workload(flags: u32) -> Workload {
    Workload {
        subject: Subject {
            organization: "acme".into(),
            environment: "prod".into(),
            application: "shop".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            interface: "veth1".into(),
            endpoint_id: 7,
            identity: 300,
        },
        flags,
        missing_labels: Vec::new(),
        ingress_policies: vec![policy("web-ingress")],
        egress_policies: vec![policy("web-egress")],
        world_allows: Vec::new(),
    }
}

fn outcome_of(results: &[CheckResult], check: &str) -> Outcome {
    results
        .iter()
        .find(|r| r.check == check)
        .unwrap_or_else(|| panic!("no {check}"))
        .outcome
}

const BOTH: u32 = EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED;

/// (case, workload, window, global audit, check, expected result)
type Case = (
    &'static str,
    Workload,
    Option<Window>,
    bool,
    &'static str,
    Outcome,
);

#[test]
#[expect(clippy::too_many_lines, reason = "a table")]
fn checks_table() {
    use Outcome::{Fail, NotApplicable as Na, Pass};
    let quiet = Some(Window {
        counts: Counts::default(),
        ms: 10_000,
    });
    let busy = |c: Counts| {
        Some(Window {
            counts: c,
            ms: 10_000,
        })
    };
    let flows = Counts {
        flows: 12,
        ..Counts::default()
    };
    let drops = Counts {
        flows: 5,
        ingress_drops: 2,
        egress_drops: 1,
        deny_rule_drops: 1,
        audited: 0,
    };
    let audited = Counts {
        flows: 3,
        audited: 3,
        ..Counts::default()
    };
    let mut unlabelled = workload(BOTH);
    unlabelled.missing_labels = vec![ENVIRONMENT];
    let mut open_world = workload(BOTH);
    open_world.world_allows = vec![policy("allow-internet")];
    // (case, workload, window, global audit, check, expected)
    let cases: Vec<Case> = vec![
        (
            "ingress enforced",
            workload(BOTH),
            quiet,
            false,
            INGRESS_DEFAULT_DENY,
            Pass,
        ),
        (
            "ingress open",
            workload(EP_F_EGRESS_ENFORCED),
            quiet,
            false,
            INGRESS_DEFAULT_DENY,
            Fail,
        ),
        (
            "egress enforced",
            workload(BOTH),
            quiet,
            false,
            EGRESS_DEFAULT_DENY,
            Pass,
        ),
        (
            "egress open",
            workload(EP_F_INGRESS_ENFORCED),
            quiet,
            false,
            EGRESS_DEFAULT_DENY,
            Fail,
        ),
        (
            "no window yet",
            workload(BOTH),
            None,
            false,
            FLOWS_OBSERVED,
            Na,
        ),
        (
            "no window yet, drops",
            workload(BOTH),
            None,
            false,
            POLICY_DROPS,
            Na,
        ),
        (
            "quiet window",
            workload(BOTH),
            quiet,
            false,
            FLOWS_OBSERVED,
            Na,
        ),
        (
            "flows seen",
            workload(BOTH),
            busy(flows),
            false,
            FLOWS_OBSERVED,
            Pass,
        ),
        (
            "no drops",
            workload(BOTH),
            busy(flows),
            false,
            POLICY_DROPS,
            Pass,
        ),
        (
            "drops",
            workload(BOTH),
            busy(drops),
            false,
            POLICY_DROPS,
            Fail,
        ),
        (
            "audited would-be drops",
            workload(BOTH),
            busy(audited),
            false,
            POLICY_DROPS,
            Fail,
        ),
        (
            "egress open is world open",
            workload(EP_F_INGRESS_ENFORCED),
            quiet,
            false,
            EGRESS_WORLD_UNRESTRICTED,
            Fail,
        ),
        (
            "egress restricted",
            workload(BOTH),
            quiet,
            false,
            EGRESS_WORLD_UNRESTRICTED,
            Pass,
        ),
        (
            "world allowed any port",
            open_world,
            quiet,
            false,
            EGRESS_WORLD_UNRESTRICTED,
            Fail,
        ),
        ("enforcing", workload(BOTH), quiet, false, AUDIT_MODE, Pass),
        (
            "global audit",
            workload(BOTH),
            quiet,
            true,
            AUDIT_MODE,
            Fail,
        ),
        (
            "endpoint audit",
            workload(BOTH | EP_F_AUDIT),
            quiet,
            false,
            AUDIT_MODE,
            Fail,
        ),
        (
            "labels complete",
            workload(BOTH),
            quiet,
            false,
            LABELS_COMPLETE,
            Pass,
        ),
        (
            "label missing",
            unlabelled,
            quiet,
            false,
            LABELS_COMPLETE,
            Fail,
        ),
    ];
    for (case, w, window, audit, check, want) in cases {
        let results = evaluate(&w, window, audit);
        assert_eq!(results.len(), CHECKS.len(), "{case}");
        assert_eq!(outcome_of(&results, check), want, "{case}: {check}");
    }
}

#[test]
fn evidence_names_counts_policies_and_missing_labels() {
    let mut w = workload(EP_F_INGRESS_ENFORCED);
    w.missing_labels = vec![ORGANIZATION, APPLICATION];
    let counts = Counts {
        flows: 9,
        ingress_drops: 4,
        egress_drops: 0,
        deny_rule_drops: 1,
        audited: 0,
    };
    let r = evaluate(&w, Some(Window { counts, ms: 5000 }), false);
    let get = |c: &str| {
        r.iter()
            .find(|x| x.check == c)
            .expect("check")
            .evidence
            .clone()
    };
    let drops = get(POLICY_DROPS);
    assert_eq!(drops.ingress_drops, Some(4));
    assert_eq!(drops.deny_rule_drops, Some(1));
    assert_eq!(drops.window_ms, Some(5000));
    assert_eq!(
        get(INGRESS_DEFAULT_DENY).policies,
        vec![policy("web-ingress")]
    );
    assert_eq!(
        get(EGRESS_WORLD_UNRESTRICTED).reason,
        Some("egress-not-enforced")
    );
    assert_eq!(
        get(LABELS_COMPLETE).missing_labels,
        vec![ORGANIZATION, APPLICATION]
    );
    // The stable part ignores counts, so a busier window is not a change.
    assert_eq!(
        drops.stable(),
        Evidence {
            reason: Some("policy-drops"),
            ..Evidence::default()
        }
    );
}

#[test]
fn subject_tokens_are_sanitised_and_missing_parts_are_underscores() {
    let labels: BTreeMap<String, String> = [
        (
            "k8s:openova.io/organization".to_owned(),
            "acme.corp".to_owned(),
        ),
        ("openova.io/application".to_owned(), "web shop>*".to_owned()),
    ]
    .into();
    let ([org, env, app], missing) = workload_names(&labels);
    assert_eq!((org.as_str(), env.as_str()), ("acme.corp", "_"));
    assert_eq!(missing, vec![ENVIRONMENT]);
    let mut s = workload(BOTH).subject;
    (s.organization, s.environment, s.application) = (org, env, app);
    assert_eq!(subject_of(&s), "catalyst.signals.acme_corp._.web_shop__");
    assert_eq!(token(""), "_");
}

fn compile_one(
    policy_yaml: &str,
    global_audit: bool,
) -> (catalyst_policy::Compiled, Vec<Vec<PolicyRefOut>>) {
    let set = PolicySet::parse_str("test.yaml", policy_yaml).expect("policy parses");
    let labels = LabelSet::parse(["app=web"], SOURCE_K8S).expect("labels");
    let input = CompileInput {
        endpoints: vec![Endpoint::new(
            7,
            "web",
            "shop",
            labels,
            vec!["10.0.0.7".parse().expect("ip")],
        )],
        peers: Vec::new(),
        policies: set.policies().to_vec(),
        global_audit,
    };
    let compiled = compile(&input).expect("compiles");
    let origins = compiled
        .origins()
        .iter()
        .map(|refs| refs.iter().map(PolicyRefOut::from).collect())
        .collect();
    (compiled, origins)
}

fn cnp(name: &str, egress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n{egress}"
    )
}

#[test]
fn world_egress_rule_on_compiled_policies() {
    // (case, egress section, world open?)
    let cases = [
        ("world, any port", "  - toEntities: [world]\n", true),
        ("all entities", "  - toEntities: [all]\n", true),
        ("0.0.0.0/0", "  - toCIDR: [0.0.0.0/0]\n", true),
        (
            "world, every TCP port",
            "  - toEntities: [world]\n    toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]\n",
            true,
        ),
        (
            "world, 443 only",
            "  - toEntities: [world]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n",
            false,
        ),
        ("a private range", "  - toCIDR: [10.0.0.0/8]\n", false),
        (
            "cluster pods",
            "  - toEndpoints: [{matchLabels: {app: web}}]\n",
            false,
        ),
    ];
    for (case, egress, open) in cases {
        let (compiled, origins) = compile_one(&cnp("p", egress), false);
        let desired = crate::datapath::DesiredState::from_compiled(&compiled, 0, 0);
        let facts = world_egress_allows(&desired, &origins);
        let f = facts.get(&7).cloned().unwrap_or_default();
        assert_eq!(!f.world_allows.is_empty(), open, "{case}: {f:?}");
        if open {
            assert_eq!(f.world_allows[0].name, "p", "{case}");
        }
        assert_eq!(
            f.egress.first().map(|p| p.name.as_str()),
            Some("p"),
            "{case}"
        );
    }
}

fn inputs(flags: u32) -> Arc<Inputs> {
    Arc::new(Inputs {
        workloads: vec![workload(flags)],
        global_audit: false,
        revision: 3,
    })
}

fn engine(heartbeat_ms: u64) -> (Engine, Arc<FlowCounts>) {
    let counts = Arc::new(FlowCounts::default());
    let cfg = crate::config::SignalsConfig {
        heartbeat_ms,
        ..crate::config::SignalsConfig::default()
    };
    (Engine::new("n1", "c1", &cfg, counts.clone()), counts)
}

fn find<'a>(signals: &'a [Signal], check: &str) -> Option<&'a Signal> {
    signals.iter().find(|s| s.check == check)
}

#[test]
fn engine_publishes_changes_then_heartbeats() {
    let (mut e, counts) = engine(60_000);
    let t0 = std::time::Instant::now();
    e.set_inputs(inputs(BOTH));
    let first = e.evaluate(Trigger::Start, t0, 0);
    assert_eq!(first.len(), CHECKS.len(), "everything once at start");
    assert!(first.iter().all(|s| s.trigger == Trigger::Start));
    assert_eq!(first[0].observed_at, "1970-01-01T00:00:00.000000000Z");
    assert_eq!(first[0].policy_revision, 3);
    // Nothing changed: nothing published.
    assert!(
        e.evaluate(Trigger::Window, t0 + Duration::from_secs(1), 0)
            .is_empty()
    );
    // A policy change: ingress no longer enforced. Exactly the checks that changed.
    e.set_inputs(inputs(EP_F_EGRESS_ENFORCED));
    let changed = e.evaluate(Trigger::Change, t0 + Duration::from_secs(2), 0);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].check, INGRESS_DEFAULT_DENY);
    assert_eq!(changed[0].result, Outcome::Fail);
    assert_eq!(changed[0].trigger, Trigger::Change);
    // Drops in a window: policy-drops fails and flows-observed passes.
    let mut rec = counts.recorder();
    for verdict in [VERDICT_FORWARDED, VERDICT_DROPPED] {
        rec.observe(&FlowEvent {
            endpoint_id: 7,
            verdict,
            drop_reason: if verdict == VERDICT_DROPPED {
                DROP_POLICY_DENY
            } else {
                0
            },
            direction: DIR_EGRESS,
            ..FlowEvent::default()
        });
    }
    e.end_window(10_000);
    let w = e.evaluate(Trigger::Window, t0 + Duration::from_secs(10), 0);
    assert_eq!(find(&w, POLICY_DROPS).expect("drops").result, Outcome::Fail);
    assert_eq!(
        find(&w, POLICY_DROPS).expect("drops").evidence.egress_drops,
        Some(1)
    );
    assert_eq!(
        find(&w, FLOWS_OBSERVED).expect("flows").result,
        Outcome::Pass
    );
    // The next window is quiet: drops pass again (counts are per window).
    e.end_window(10_000);
    let w = e.evaluate(Trigger::Window, t0 + Duration::from_secs(20), 0);
    assert_eq!(find(&w, POLICY_DROPS).expect("drops").result, Outcome::Pass);
    // A policy change between windows keeps the last window's counts: no spurious change.
    e.set_inputs(inputs(BOTH));
    let c = e.evaluate(Trigger::Change, t0 + Duration::from_secs(21), 0);
    assert_eq!(
        c.iter().map(|s| s.check).collect::<Vec<_>>(),
        vec![INGRESS_DEFAULT_DENY]
    );
    // Heartbeat: everything again, marked as such.
    let hb = e.evaluate(Trigger::Window, t0 + Duration::from_secs(61), 0);
    assert_eq!(hb.len(), CHECKS.len());
    assert!(hb.iter().all(|s| s.trigger == Trigger::Heartbeat));
}

#[test]
fn removed_workloads_are_forgotten_and_come_back_fresh() {
    let (mut e, counts) = engine(60_000);
    let t0 = std::time::Instant::now();
    e.set_inputs(inputs(BOTH));
    assert_eq!(e.evaluate(Trigger::Start, t0, 0).len(), CHECKS.len());
    counts.recorder().observe(&FlowEvent {
        endpoint_id: 7,
        verdict: VERDICT_AUDIT,
        drop_reason: DROP_POLICY_DENIED,
        direction: DIR_INGRESS,
        ..FlowEvent::default()
    });
    e.set_inputs(Arc::new(Inputs::default()));
    assert!(e.evaluate(Trigger::Change, t0, 0).is_empty());
    assert!(
        counts.read().is_empty(),
        "counters of a removed endpoint are dropped"
    );
    e.set_inputs(inputs(BOTH));
    assert_eq!(e.evaluate(Trigger::Change, t0, 0).len(), CHECKS.len());
}

#[test]
fn signal_json_has_the_documented_shape() {
    let (mut e, _) = engine(60_000);
    e.set_inputs(inputs(EP_F_INGRESS_ENFORCED));
    let s = e.evaluate(
        Trigger::Start,
        std::time::Instant::now(),
        1_795_651_200_000_000_000,
    );
    let world = find(&s, EGRESS_WORLD_UNRESTRICTED).expect("check");
    let v = serde_json::to_value(world).expect("json");
    assert_eq!(v["schema"], "catalyst.signal/v1");
    assert_eq!(v["check"], "egress-world-unrestricted");
    assert_eq!(v["result"], "fail");
    assert_eq!(v["subject"]["organization"], "acme");
    assert_eq!(v["subject"]["pod"], "web-1");
    assert_eq!(v["evidence"]["reason"], "egress-not-enforced");
    assert_eq!(v["evidence"]["enforced"], false);
    assert!(
        v["evidence"].get("flows").is_none(),
        "unused evidence is left out"
    );
    assert_eq!(v["observed_at"], "2026-11-26T00:00:00.000000000Z");
    assert_eq!(v["node"], "n1");
    assert_eq!(v["cluster"], "c1");
    assert_eq!(v["trigger"], "start");
    assert_eq!(world.nats_subject(), "catalyst.signals.acme.prod.shop");
}

#[test]
fn inputs_from_a_snapshot_use_config_labels_and_compiled_flags() {
    // `lo` exists everywhere, so the endpoint resolves without root.
    let cfg = AgentConfig::parse(
        Path::new("agent.yaml"),
        "node: n1\naudit: true\nendpoints:\n  - name: web\n    namespace: shop\n    interface: lo\n    addresses: [10.0.0.7]\n    labels: {app: web, openova.io/organization: acme, openova.io/application: shop}\n",
    )
    .expect("config");
    let policies =
        PolicySet::parse_str("p.yaml", &cnp("open", "  - toEntities: [world]\n")).expect("policy");
    let snap = crate::state::build(&cfg, &policies, &mut crate::state::Allocators::default())
        .expect("snapshot");
    let inputs = Inputs::from_snapshot(&cfg, &snap, 9);
    assert!(inputs.global_audit);
    let [w] = inputs.workloads.as_slice() else {
        panic!("one workload: {inputs:?}");
    };
    assert_eq!(w.subject.organization, "acme");
    assert_eq!(w.subject.environment, "_");
    assert_eq!(w.missing_labels, vec![ENVIRONMENT]);
    assert_eq!(w.flags & EP_F_EGRESS_ENFORCED, EP_F_EGRESS_ENFORCED);
    assert_eq!(w.flags & EP_F_INGRESS_ENFORCED, 0);
    assert_eq!(w.world_allows[0].name, "open");
}

/// Needs the `nats-server` binary: signals arrive on `catalyst.signals.<org>.<env>.<app>` and
/// in the `CATALYST_SIGNALS` stream; a change is published at once; while the server is down
/// signals are dropped and counted, and publishing resumes after it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_nats_and_survive_an_outage_needs_nats_server() {
    use futures_util::StreamExt as _;

    use crate::nats::test_server::NatsServer;

    if !catalyst_tests::require::require(
        "signals_reach_nats_and_survive_an_outage_needs_nats_server",
        &[catalyst_tests::require::Need::NatsServer],
    ) {
        return;
    }
    let mut server = NatsServer::start("signals");
    let url = server.url();
    let cfg = AgentConfig::parse(
        Path::new("agent.yaml"),
        &format!("node: n1\nnats: {{url: \"{url}\", cluster: c1}}\nsignals: {{interval_ms: 200, heartbeat_ms: 400}}\n"),
    )
    .expect("config");
    let watcher = crate::nats::connect(&url, &catalyst_policy::nats::NatsAuth::default())
        .await
        .expect("client");
    let mut sub = watcher
        .subscribe("catalyst.signals.>")
        .await
        .expect("subscribe");
    let metrics = crate::nats::ExportMetrics::default();
    let client = crate::nats::connect(&url, &catalyst_policy::nats::NatsAuth::default())
        .await
        .expect("client");
    let handle = start(
        &cfg,
        Arc::unwrap_or_clone(inputs(BOTH)),
        Some(client),
        Arc::new(FlowCounts::default()),
        metrics.clone(),
    );
    let next = async |sub: &mut async_nats::Subscriber| -> (String, serde_json::Value) {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a signal within 20 s")
            .expect("subscription open");
        (
            msg.subject.to_string(),
            serde_json::from_slice(&msg.payload).expect("JSON signal"),
        )
    };
    let (subject, first) = next(&mut sub).await;
    assert_eq!(subject, "catalyst.signals.acme.prod.shop");
    assert_eq!(first["schema"], SCHEMA);
    assert_eq!(first["node"], "n1");
    assert_eq!(first["cluster"], "c1");
    // A policy change: the ingress check flips and is published promptly.
    let changed_at = std::time::Instant::now();
    handle.update(Arc::unwrap_or_clone(inputs(EP_F_EGRESS_ENFORCED)));
    loop {
        let (_, s) = next(&mut sub).await;
        if s["check"] == INGRESS_DEFAULT_DENY && s["result"] == "fail" {
            assert_eq!(s["trigger"], "change");
            break;
        }
    }
    assert!(
        changed_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed_at.elapsed()
    );
    let js = async_nats::jetstream::new(watcher.clone());
    let mut stream = js
        .get_stream("CATALYST_SIGNALS")
        .await
        .expect("stream exists");
    assert!(stream.info().await.expect("info").state.messages >= 2);
    // Acknowledged publishes are counted (the acks may trail the deliveries seen above when the
    // machine is busy, so wait for them rather than read the counter once).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metrics.published() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} acknowledged publishes in 20 s",
            metrics.published()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Outage: heartbeats keep coming every 400 ms and are dropped and counted.
    let published = metrics.published();
    server.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metrics.dropped() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no drop counted during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.restart();
    // Publishing resumes: new heartbeats arrive (the watcher resubscribes on reconnect).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metrics.published() <= published {
        assert!(
            std::time::Instant::now() < deadline,
            "publishing did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, s) = next(&mut sub).await;
    assert_eq!(s["schema"], SCHEMA);
    handle.abort();
}
