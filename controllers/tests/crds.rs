//! The generated CRDs: committed YAML matches the Rust types (drift), the example resources are
//! accepted, and malformed resources are refused by the schema and CEL rules with a message
//! naming the field — what the API server does with the same CRDs.

use std::path::{Path, PathBuf};

use catalyst_controllers::{
    crd,
    standalone::{Inputs, load},
    validate::Validator,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = crd::yaml();
    for path in [
        "deploy/crds/catalyst-controllers.yaml",
        "deploy/helm/catalyst/crds/catalyst-controllers.yaml",
    ] {
        let committed = std::fs::read_to_string(root().join(path)).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is out of date: run `cargo run -p catalyst-controllers -- crds > {path}`"
        );
    }
}

#[test]
fn every_crd_has_descriptions_printer_columns_and_a_status_subresource() {
    for c in crd::all() {
        let name = c.metadata.name.clone().unwrap();
        for v in &c.spec.versions {
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}: no status subresource"
            );
            assert!(
                v.additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| c.len() >= 3),
                "{name}: printer columns"
            );
            let schema = serde_json::to_value(
                v.schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut missing = Vec::new();
            undocumented(&schema["properties"]["spec"], "spec", &mut missing);
            assert!(
                missing.is_empty(),
                "{name}: fields without a description (kubectl explain): {missing:?}"
            );
        }
    }
}

fn undocumented(s: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            if v["description"].as_str().is_none_or(str::is_empty) {
                out.push(p.clone());
            }
            undocumented(v, &p, out);
            undocumented(&v["items"], &format!("{p}[]"), out);
        }
    }
}

#[test]
fn example_resources_are_valid() {
    let dir = root().join("deploy/examples/controllers/resources");
    let (inputs, errors) = load(&dir, &Validator::for_catalyst(), &Inputs::default());
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(inputs.organizations.len(), 2);
    assert_eq!(inputs.environments.len(), 2);
    assert_eq!(inputs.environment_policies.len(), 1);
    assert_eq!(inputs.continuums.len(), 1);
}

/// Each file under tests/invalid/ starts with `# expect: <field> | <message fragment>`.
#[test]
fn malformed_resources_are_refused_naming_the_field() {
    let validator = Validator::for_catalyst();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 15);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap();
        let (field, fragment) = expect.split_once(" | ").unwrap();
        let value: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let errors = validator
            .validate(&value)
            .expect_err(&format!("{} must be refused", f.display()));
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(fragment.trim())),
            "{}: expected `{field}: …{fragment}…`, got {errors:#?}",
            f.display()
        );
    }
}

#[test]
fn immutable_fields_are_refused_on_update() {
    // Transition rules (oldSelf) are checked on updates, as the API server does.
    let cel = kube::core::cel::Validator::new();
    let c = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "Environment")
        .unwrap();
    let schema = serde_json::to_value(
        c.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let old: serde_json::Value = serde_json::json!({"apiVersion": "catalyst.openova.io/v1", "kind": "Environment",
        "metadata": {"name": "e"}, "spec": {"organization": "acme", "name": "prod"}});
    let mut new = old.clone();
    new["spec"]["organization"] = "globex".into();
    let errs = cel
        .validate(&schema, &new, Some(&old))
        .expect_err("organization is immutable");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("spec.organization is immutable")),
        "{errs:?}"
    );
    assert!(cel.validate(&schema, &old, Some(&old)).is_ok());
}
