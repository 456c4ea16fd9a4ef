//! The Grafana dashboards (deploy/grafana/*.json) reference only metrics the programs export:
//! every `PromQL` expression of every panel is tokenised, its metric names extracted, and each
//! name looked up in the families that catalyst-agent, catalyst-dns and catalyst-controllers
//! register, read from their own registries' text exposition in-process (no hand-kept list).
//!
//! What is not verified: label names and values in the expressions, and that Grafana renders
//! the panels (no Grafana here).

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;

/// Names a scrape of `exposition` can contain: from each `# TYPE` line, with the suffixes the
/// type's samples carry.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["_sum", "_count", "_created", ""],
            "info" => &["_info"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

fn skip_quoted(chars: &[char], mut i: usize) -> usize {
    let q = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != q {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Skips from an opening bracket to after its match (quotes inside are honoured).
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_quoted(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

const KEYWORDS: [&str; 13] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Metric names a `PromQL` expression selects: identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names in `by (…)`/`on (…)` lists, label
/// matchers (`{…}`), ranges (`[…]`), strings or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_quoted(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // `sum by (a) (…)`: an aggregation whose grouping comes first.
                let word: String = chars[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let call = chars.get(j) == Some(&'(') || word == "by" || word == "without";
                let lower = ident.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    if call {
                        // A label list: `by (a, b)`.
                        i = skip_group(&chars, j, '(', ')');
                    }
                } else if !call {
                    names.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` of every panel (nested rows included).
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().expect("expr is a string").to_owned());
                } else {
                    expressions(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

/// What the three programs register, from their registries' exposition. A labelled family
/// appears in the exposition only once it has a sample, so each program's own recording
/// functions are driven once first (a dropped TCP packet, a policy verdict, a counters read, a
/// health check, a reload).
fn program_metrics() -> BTreeSet<String> {
    use catalyst_policy::datapath::{
        COUNTER_SLOTS, EVENT_DROP, EVENT_POLICY_VERDICT, FlowEvent, VERDICT_DROPPED,
        VERDICT_FORWARDED,
    };
    let agent = catalyst_agent::metrics::Metrics::new(256);
    let mut rec = agent.flows.recorder();
    for (kind, verdict) in [
        (EVENT_DROP, VERDICT_DROPPED),
        (EVENT_POLICY_VERDICT, VERDICT_FORWARDED),
    ] {
        rec.observe(&FlowEvent {
            kind,
            verdict,
            protocol: 6,
            family: 4,
            tcp_flags: 2,
            direction: 1,
            dport: 443,
            ..FlowEvent::default()
        });
    }
    agent.flows.lost("perf_event_ring_buffer", 1);
    agent
        .datapath
        .update_counters(&vec![1; COUNTER_SLOTS as usize]);
    let mut names = exported_names(&agent.encode());
    let mut dns = prometheus_client::registry::Registry::default();
    let m =
        catalyst_dns::metrics::DnsMetrics::register(dns.sub_registry_with_prefix("catalyst_dns"));
    m.reload(true);
    m.health.observe(
        &catalyst_dns::health::Target::Tcp("192.0.2.1:80".parse().unwrap()),
        true,
        true,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &dns).unwrap();
    names.extend(exported_names(&text));
    names.extend(exported_names(
        &catalyst_controllers::metrics::Metrics::new().encode(),
    ));
    names
}

fn dashboards_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana")
}

#[test]
fn dashboards_reference_only_exported_metrics() {
    let exported = program_metrics();
    assert!(
        exported.contains("hubble_flows_processed_total"),
        "{exported:?}"
    );
    let mut files: Vec<_> = std::fs::read_dir(dashboards_dir())
        .expect("deploy/grafana holds the dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let titles: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        titles,
        [
            "catalyst-datapath.json",
            "catalyst-dns.json",
            "catalyst-flows.json"
        ]
    );
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for f in &files {
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(dash["uid"].is_string() && dash["panels"].is_array());
        let mut exprs = Vec::new();
        expressions(&dash, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no expressions", f.display());
        for e in exprs {
            let names = metric_names(&e);
            assert!(
                !names.is_empty(),
                "{}: `{e}` selects no metric",
                f.display()
            );
            for n in names {
                if !exported.contains(&n) {
                    missing.push(format!("{}: {n} in `{e}`", f.display()));
                }
                used.insert(n);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards reference metrics no program exports:\n{}",
        missing.join("\n")
    );
    // What the dashboards are for (issue 16 item 11).
    for needed in [
        "hubble_flows_processed_total",
        "hubble_drop_total",
        "hubble_policy_verdicts_total",
        "catalyst_datapath_packets_total",
        "catalyst_conntrack_entries",
        "catalyst_policy_map_entries",
        "catalyst_dns_queries_total",
        "catalyst_dns_health_up",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn promql_metric_names_are_extracted() {
    let e = r#"histogram_quantile(0.99, sum by (le, job) (rate(a_seconds_bucket{instance=~"$i", x="y{z}"}[$__rate_interval]))) / on (job) group_left (pod) b_total offset 5m > bool 1e3 and c:rule"#;
    assert_eq!(
        metric_names(e).into_iter().collect::<Vec<_>>(),
        ["a_seconds_bucket", "b_total", "c:rule"]
    );
    let names = exported_names("# TYPE x counter\n# TYPE y histogram\n# TYPE z gauge\n");
    assert!(names.contains("x_total") && names.contains("y_bucket") && names.contains("z"));
    assert!(!names.contains("x") && !names.contains("y"));
}
