//! Kyverno `PolicyReport` / `ClusterPolicyReport` (`wgpolicyk8s.io/v1alpha2`) and the `OpenReports`
//! successor `Report` / `ClusterReport` (`openreports.io/v1alpha1`) → rows.
//!
//! The check id is the result's `policy`; the rules of one policy on one resource fold into one
//! row: `fail` when any rule fails, `warn`s or `error`s (fail closed), else `pass` when any
//! passes, else `n-a` (every rule skipped).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::InputError;
use crate::compliance::{
    aggregate::Tenants,
    row::{AppKey, Outcome, Row, Source, Workload},
};

/// Whether `(apiVersion, kind)` is a report this module reads.
pub fn is_report(api: &str, kind: &str) -> bool {
    matches!(
        (api, kind),
        (
            "wgpolicyk8s.io/v1alpha2",
            "PolicyReport" | "ClusterPolicyReport"
        ) | ("openreports.io/v1alpha1", "Report" | "ClusterReport")
    )
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// One policy on one resource: outcome, failing rules, passing rules, first failure message.
type Folded = (Outcome, Vec<String>, u32, String);

/// The rows of one report document (`input` names it in errors). Resources are placed in their
/// application by their namespace (Environment `spec.namespaces`); a resource in a namespace no
/// Environment owns is skipped (it belongs to no application).
///
/// # Errors
/// Not a report kind, or a result without `policy` / a known `result`, naming the result index.
#[expect(
    clippy::too_many_lines,
    reason = "parse, fold and emit of one report read top to bottom"
)]
pub fn report_rows(
    input: &str,
    doc: &Value,
    tenants: &Tenants,
    default_sovereign: &str,
) -> Result<Vec<Row>, InputError> {
    let err = |message: String| InputError {
        input: input.to_owned(),
        message,
    };
    let (api, kind) = (
        str_at(doc, "apiVersion").unwrap_or(""),
        str_at(doc, "kind").unwrap_or(""),
    );
    if !is_report(api, kind) {
        return Err(err(format!(
            "apiVersion/kind `{api}` `{kind}` is not a PolicyReport, ClusterPolicyReport (wgpolicyk8s.io/v1alpha2), Report or ClusterReport (openreports.io/v1alpha1)"
        )));
    }
    let report_ns = doc["metadata"]["namespace"].as_str().unwrap_or("");
    let observed = doc["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let scope = doc.get("scope").filter(|s| s.is_object());
    // (policy, resource) → (outcome, failing rules, passing rules, message of first failure)
    let mut folded: BTreeMap<(String, Workload), Folded> = BTreeMap::new();
    let results = match doc.get("results") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(err("results: not a list".into())),
    };
    for (i, r) in results.iter().enumerate() {
        let at = |m: &str| err(format!("results[{i}].{m}"));
        let policy = str_at(r, "policy").ok_or_else(|| at("policy: missing"))?;
        let rule = str_at(r, "rule").unwrap_or("");
        let outcome = match str_at(r, "result") {
            Some("pass") => Outcome::Pass,
            Some("fail" | "warn" | "error") => Outcome::Fail,
            Some("skip") => Outcome::NotApplicable,
            Some(o) => {
                return Err(at(&format!(
                    "result: `{o}` is not pass, fail, warn, error or skip"
                )));
            }
            None => return Err(at("result: missing")),
        };
        let resources: Vec<&Value> = match r.get("resources").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => scope.into_iter().collect(),
        };
        if resources.is_empty() {
            return Err(at("resources: missing, and the report has no scope"));
        }
        for res in resources {
            let w = Workload {
                kind: str_at(res, "kind").unwrap_or("").to_owned(),
                namespace: str_at(res, "namespace").unwrap_or(report_ns).to_owned(),
                name: str_at(res, "name")
                    .ok_or_else(|| at("resources[].name: missing"))?
                    .to_owned(),
            };
            let e = folded.entry((policy.to_owned(), w)).or_insert((
                Outcome::NotApplicable,
                Vec::new(),
                0,
                String::new(),
            ));
            match outcome {
                Outcome::Fail => {
                    e.0 = Outcome::Fail;
                    e.1.push(format!("{rule}: {}", str_at(r, "result").unwrap_or("")));
                    if e.3.is_empty() {
                        str_at(r, "message").unwrap_or("").clone_into(&mut e.3);
                    }
                }
                Outcome::Pass => {
                    e.2 += 1;
                    if e.0 == Outcome::NotApplicable {
                        e.0 = Outcome::Pass;
                    }
                }
                Outcome::NotApplicable => {}
            }
        }
    }
    let mut rows = Vec::new();
    for ((policy, w), (outcome, failing, passing, message)) in folded {
        let Some((org, env, app)) = tenants.namespace(&w.namespace) else {
            continue;
        };
        rows.push(Row {
            check: policy,
            app: AppKey {
                sovereign: tenants.sovereign(org, default_sovereign).to_owned(),
                organization: org.to_owned(),
                environment: env.to_owned(),
                application: app.unwrap_or("_").to_owned(),
            },
            workload: w,
            outcome,
            evidence: json!({
                "report": format!("{kind} {report_ns}/{}", doc["metadata"]["name"].as_str().unwrap_or("")),
                "failing_rules": failing,
                "passing_rules": passing,
                "message": message,
            }),
            observed_at: observed.clone(),
            source: Source::PolicyReport,
        });
    }
    Ok(rows)
}
