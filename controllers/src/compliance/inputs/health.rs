//! catalyst-dns health transitions (`catalyst.health.<zone>.<target>`, dns/src/health) → rows
//! of the check `failover-target-healthy` for the application the target serves.

use serde::Deserialize;

use super::{InputError, from_json};
use crate::compliance::{
    aggregate::Tenants,
    config::HealthTarget,
    row::{AppKey, Outcome, Row, Source, Workload},
};

/// Check id of health rows.
pub const CHECK: &str = "failover-target-healthy";

#[derive(Deserialize)]
struct HealthEvent {
    zone: String,
    target: String,
    status: String,
    previous: String,
    #[serde(default)]
    reason: Option<String>,
    at: u64,
}

/// One health event → a row, or `None` when no configured application uses the target.
///
/// # Errors
/// Not JSON, a missing field, or a status other than `up` / `down`.
pub fn health_row(
    subject: &str,
    payload: &[u8],
    targets: &[HealthTarget],
    tenants: &Tenants,
    default_sovereign: &str,
) -> Result<Option<Row>, InputError> {
    let input = format!("health event on `{subject}`");
    let e: HealthEvent = from_json(&input, payload)?;
    let outcome = match e.status.as_str() {
        "up" => Outcome::Pass,
        "down" => Outcome::Fail,
        other => {
            return Err(InputError {
                input,
                message: format!("status: `{other}` is neither `up` nor `down`"),
            });
        }
    };
    let Some(t) = targets.iter().find(|t| {
        t.zone.trim_end_matches('.') == e.zone.trim_end_matches('.') && t.target == e.target
    }) else {
        return Ok(None);
    };
    let observed_at = jiff::Timestamp::from_second(i64::try_from(e.at).unwrap_or(0))
        .map_or_else(|_| e.at.to_string(), |t| t.to_string());
    Ok(Some(Row {
        check: CHECK.into(),
        app: AppKey {
            sovereign: tenants
                .sovereign(&t.organization, default_sovereign)
                .to_owned(),
            organization: t.organization.clone(),
            environment: t.environment.clone(),
            application: t.application.clone(),
        },
        workload: Workload {
            kind: "FailoverTarget".into(),
            namespace: e.zone,
            name: e.target,
        },
        outcome,
        evidence: serde_json::json!({
            "status": e.status,
            "previous": e.previous,
            "reason": e.reason,
        }),
        observed_at,
        source: Source::Health,
    }))
}
