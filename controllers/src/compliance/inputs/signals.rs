//! `catalyst.signal/v1` (docs/signals.md, published by the agent) → rows.

use serde::Deserialize;

use super::{InputError, from_json};
use crate::compliance::{
    aggregate::Tenants,
    row::{AppKey, Outcome, Row, Source, Workload},
};

/// The fields of a signal the aggregator uses (unknown fields are accepted: the agent may add
/// evidence and context without a schema bump).
#[derive(Deserialize)]
struct Signal {
    schema: String,
    check: String,
    result: Outcome,
    subject: Subject,
    #[serde(default)]
    evidence: serde_json::Value,
    observed_at: String,
}

#[derive(Deserialize)]
struct Subject {
    organization: String,
    environment: String,
    application: String,
    namespace: String,
    pod: String,
}

/// One signal payload received on `subject` → a row for the pod it judges.
///
/// # Errors
/// Not JSON, a missing or mistyped field, or another schema than `catalyst.signal/v1`.
pub fn signal_row(
    subject: &str,
    payload: &[u8],
    tenants: &Tenants,
    default_sovereign: &str,
) -> Result<Row, InputError> {
    let input = format!("signal on `{subject}`");
    let s: Signal = from_json(&input, payload)?;
    if s.schema != "catalyst.signal/v1" {
        return Err(InputError {
            input,
            message: format!("schema: `{}` is not catalyst.signal/v1", s.schema),
        });
    }
    Ok(Row {
        check: s.check,
        app: AppKey {
            sovereign: tenants
                .sovereign(&s.subject.organization, default_sovereign)
                .to_owned(),
            organization: s.subject.organization,
            environment: s.subject.environment,
            application: s.subject.application,
        },
        workload: Workload {
            kind: "Pod".into(),
            namespace: s.subject.namespace,
            name: s.subject.pod,
        },
        outcome: s.result,
        evidence: s.evidence,
        observed_at: s.observed_at,
        source: Source::Signal,
    })
}
