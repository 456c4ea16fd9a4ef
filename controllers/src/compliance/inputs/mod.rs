//! Inputs → rows: the agent's signals and catalyst-dns health events (NATS payloads), and
//! `PolicyReport`s and workload objects read from files in standalone mode. Every parser is pure
//! and reports bad input naming the input and position.

mod health;
mod reports;
mod signals;
mod workloads;

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

pub use self::{
    health::health_row,
    reports::report_rows,
    signals::signal_row,
    workloads::{Objects, evaluate},
};

/// Bad input, naming where it came from and the position in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input}: {message}")]
pub struct InputError {
    /// The input: `file.yaml document 2`, `subject catalyst.signals.acme.prod.shop`, …
    pub input: String,
    /// What is wrong, with the field path (and line/column for JSON).
    pub message: String,
}

/// Parses a JSON payload into `T`, naming the field path, line and column of a problem.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    input: &str,
    bytes: &[u8],
) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| InputError {
        input: input.to_owned(),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Every document of the `*.yaml` / `*.yml` / `*.json` files of `dir` (sorted by name, not
/// recursive), each with a label `file document N`. Unreadable files and documents that are not
/// YAML are reported.
pub fn read_documents(dir: &Path) -> (Vec<(String, Value)>, Vec<InputError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect(),
        Err(e) => {
            errors.push(InputError {
                input: dir.display().to_string(),
                message: format!("cannot read directory: {e}"),
            });
            return (docs, errors);
        }
    };
    files.sort();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(InputError {
                    input: f.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let label = format!("{} document {}", f.display(), i + 1);
            match Value::deserialize(doc) {
                Ok(Value::Null) => {}
                Ok(Value::Object(o)) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                    for (j, item) in o
                        .get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        docs.push((format!("{label} item {j}"), item.clone()));
                    }
                }
                Ok(v) => docs.push((label, v)),
                Err(e) => errors.push(InputError {
                    input: label,
                    message: format!("not YAML: {e}"),
                }),
            }
        }
    }
    (docs, errors)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The rows of the standalone-mode files: `PolicyReport`s from `reports` and the evaluators'
/// rows over the workload objects of `workloads`, with every problem found (bad documents are
/// skipped; the rest counts).
pub fn file_rows(
    reports: Option<&Path>,
    workloads: Option<&Path>,
    settings: &crate::compliance::config::EvaluatorSettings,
    tenants: &crate::compliance::aggregate::Tenants,
    default_sovereign: &str,
) -> (
    Vec<crate::compliance::row::Row>,
    Vec<crate::compliance::row::Row>,
    Vec<InputError>,
) {
    let mut errors = Vec::new();
    let mut report_docs = Vec::new();
    if let Some(dir) = reports {
        let (docs, mut e) = read_documents(dir);
        errors.append(&mut e);
        report_docs = docs;
    }
    let mut workload_docs = Vec::new();
    if let Some(dir) = workloads {
        let (docs, mut e) = read_documents(dir);
        errors.append(&mut e);
        workload_docs = docs;
    }
    let (eval, report_out, mut e) = object_rows(
        &report_docs,
        &workload_docs,
        settings,
        tenants,
        default_sovereign,
    );
    errors.append(&mut e);
    (eval, report_out, errors)
}

/// The rows of report documents and workload objects, each with a label naming it in errors:
/// the one path of both modes (files in standalone mode, the watchers' stores in Kubernetes
/// mode). `Namespace` objects among `workloads` place namespaces that no Environment lists in
/// the application of their `openova.io/*` labels. Returns the evaluators' rows, the reports'
/// rows and every problem found (bad documents are skipped; the rest counts).
pub fn object_rows(
    reports: &[(String, Value)],
    workloads: &[(String, Value)],
    settings: &crate::compliance::config::EvaluatorSettings,
    tenants: &crate::compliance::aggregate::Tenants,
    default_sovereign: &str,
) -> (
    Vec<crate::compliance::row::Row>,
    Vec<crate::compliance::row::Row>,
    Vec<InputError>,
) {
    let mut errors = Vec::new();
    let mut objects = Objects::default();
    for (label, doc) in workloads {
        if let Err(e) = objects.add(label, doc) {
            errors.push(e);
        }
    }
    let labelled = objects.namespaces();
    let with_ns;
    let tenants = if labelled.is_empty() {
        tenants
    } else {
        with_ns = tenants.with_namespace_labels(labelled);
        &with_ns
    };
    let mut report_out = Vec::new();
    for (label, doc) in reports {
        match report_rows(label, doc, tenants, default_sovereign) {
            Ok(mut rows) => report_out.append(&mut rows),
            Err(e) => errors.push(e),
        }
    }
    let eval = evaluate(&objects, settings, tenants, default_sovereign);
    (eval, report_out, errors)
}
