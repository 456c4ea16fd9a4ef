//! Validation of custom resources the way the API server does it: the generated CRD's `OpenAPI`
//! schema (types, required fields, patterns, ranges, lengths) and its CEL
//! `x-kubernetes-validations` rules. Standalone mode and `catalyst-controllers validate` use it,
//! so a manifest is refused here with the message the API server would give.

use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// A resource the validator refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{name}`: {field}: {message}")]
pub struct Invalid {
    /// Kind of the resource.
    pub kind: String,
    /// Name of the resource (or `<unnamed>`).
    pub name: String,
    /// Field path (`spec.grants[0].ports`), `.` for the whole object.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

struct Compiled {
    kind: String,
    openapi: Value,
    schema: jsonschema::Validator,
}

/// Validators for every CRD of the crate, by `apiVersion` and `kind`.
pub struct Validator {
    by_type: BTreeMap<(String, String), Compiled>,
    cel: kube::core::cel::Validator,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// Validators for the given CRDs (their served versions).
    ///
    /// # Panics
    ///
    /// When a CRD has no schema or its schema is not a valid JSON schema: derived CRDs always
    /// have a valid one.
    pub fn new(crds: &[CustomResourceDefinition]) -> Self {
        let mut by_type = BTreeMap::new();
        for crd in crds {
            for v in &crd.spec.versions {
                let openapi = serde_json::to_value(
                    v.schema
                        .as_ref()
                        .and_then(|s| s.open_api_v3_schema.as_ref())
                        .expect("derived CRDs carry a schema"),
                )
                .expect("schema serialises");
                let schema = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .build(&json_schema(&openapi))
                    .expect("a generated CRD schema is a valid JSON schema");
                by_type.insert(
                    (
                        format!("{}/{}", crd.spec.group, v.name),
                        crd.spec.names.kind.clone(),
                    ),
                    Compiled {
                        kind: crd.spec.names.kind.clone(),
                        openapi,
                        schema,
                    },
                );
            }
        }
        Self {
            by_type,
            cel: kube::core::cel::Validator::new(),
        }
    }

    /// Validators for this crate's CRDs.
    pub fn for_catalyst() -> Self {
        Self::new(&crate::crd::all())
    }

    /// Whether the validator knows the type.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.by_type
            .contains_key(&(api_version.to_owned(), kind.to_owned()))
    }

    /// Validates an object (as JSON) and returns every problem found, schema first, then CEL
    /// (the API server does not evaluate CEL rules on an object that fails the schema).
    pub fn validate(&self, obj: &Value) -> Result<(), Vec<Invalid>> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or("<unnamed>")
            .to_owned();
        let invalid = |field: String, message: String| Invalid {
            kind: kind.to_owned(),
            name: name.clone(),
            field,
            message,
        };
        let Some(c) = self.by_type.get(&(api_version.to_owned(), kind.to_owned())) else {
            return Err(vec![invalid(
                "apiVersion".into(),
                format!("unknown type {api_version} {kind}"),
            )]);
        };
        let mut errors = Vec::new();
        let meta_name = obj["metadata"]["name"].as_str();
        if !meta_name.is_some_and(is_dns_subdomain) {
            errors.push(invalid(
                "metadata.name".into(),
                "Required value: a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.'; at most 253 characters)".into(),
            ));
        }
        for e in c.schema.iter_errors(obj) {
            let path = pointer_to_path(&e.instance_path.to_string());
            errors.push(invalid(path, schema_message(&e)));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Err(errs) = self.cel.validate(&c.openapi, obj, None) {
            for e in errs.into_vec() {
                let path = e.field_path.trim_start_matches('.');
                let field = if path.is_empty() {
                    ".".to_owned()
                } else {
                    path.to_owned()
                };
                errors.push(invalid(field, e.message.clone()));
            }
        }
        let _ = &c.kind;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn schema_message(e: &jsonschema::ValidationError<'_>) -> String {
    e.to_string()
}

/// `/spec/grants/0/ports` → `spec.grants[0].ports`; the root → `.`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            let _ = write!(out, "[{part}]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    if out.is_empty() { ".".into() } else { out }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `OpenAPI` v3 (as in CRDs) → JSON Schema: `nullable: true` allows `null`; Kubernetes
/// extensions are annotations and ignored by the JSON-schema validator.
fn json_schema(openapi: &Value) -> Value {
    match openapi {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), json_schema(v));
            }
            if out.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert(
                        "type".into(),
                        Value::Array(vec![Value::String(t), Value::String("null".into())]),
                    );
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(json_schema).collect()),
        v => v.clone(),
    }
}
