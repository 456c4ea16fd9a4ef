//! Standalone mode: custom resources from a directory, generated objects to a directory. The
//! same reconcile cores run as in Kubernetes mode; a plan is executed as file writes. `GitOps` users
//! review the output; the agent reads `<output>/policies/` directly.
//!
//! Output layout:
//! - `<output>/policies/<kind>-<namespace>-<name>.yaml`: Cilium policies (what the agent reads);
//! - `<output>/objects/<kind>-<namespace>-<name>.yaml`: namespaces and role bindings;
//! - `<output>/status/<kind>-<name>.yaml`: the status the controllers would write to each resource.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use kube::ResourceExt;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use tracing::{info, warn};

use crate::{
    crd::{Continuum, Environment, EnvironmentPolicy, Organization},
    metrics::Metrics,
    object::{Generated, MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, ObjectKey, PruneAction, plan},
    tenancy::{self, TenancyConfig, World},
    validate::Validator,
};

/// Settings of standalone mode (the `standalone:` section of the config).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Directory of custom-resource manifests (`*.yaml`, `*.yml`, multi-document; subdirectories
    /// are not read). Relative to the config file.
    pub input: PathBuf,
    /// Directory the generated objects are written to (created when missing). Relative to the
    /// config file.
    pub output: PathBuf,
    /// How often the input directory is checked for changes, milliseconds. Default 500.
    #[serde(default = "interval")]
    pub interval_ms: u64,
}

fn interval() -> u64 {
    500
}

/// A manifest the loader refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// File.
    pub file: PathBuf,
    /// 1-based document index in the file.
    pub document: usize,
    /// The problem, naming the field.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: document {}: {}",
            self.file.display(),
            self.document,
            self.message
        )
    }
}

/// The custom resources read from the input directory.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Organizations.
    pub organizations: Vec<Organization>,
    /// Environments.
    pub environments: Vec<Environment>,
    /// Environment policies.
    pub environment_policies: Vec<EnvironmentPolicy>,
    /// Continuums.
    pub continuums: Vec<Continuum>,
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every manifest of `dir`. A document that fails validation is reported and skipped: the
/// version of that resource in `previous` (the last good one) stays in force, as an API server
/// keeps the stored object when an update is refused.
pub fn load(dir: &Path, validator: &Validator, previous: &Inputs) -> (Inputs, Vec<InputError>) {
    let mut out = Inputs::default();
    let mut errors = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    let files = match yaml_files(dir) {
        Ok(f) => f,
        Err(e) => {
            errors.push(InputError {
                file: dir.to_owned(),
                document: 0,
                message: format!("cannot read directory: {e}"),
            });
            return (previous.clone(), errors);
        }
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(InputError {
                    file,
                    document: 0,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let document = i + 1;
            let err = |message: String| InputError {
                file: file.clone(),
                document,
                message,
            };
            let value = match Value::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    errors.push(err(format!("not YAML: {e}")));
                    continue;
                }
            };
            let (api, kind) = (
                value["apiVersion"].as_str().unwrap_or(""),
                value["kind"].as_str().unwrap_or(""),
            );
            if !validator.knows(api, kind) {
                errors.push(err(format!(
                    "apiVersion/kind `{api}` `{kind}` is not a Catalyst resource (Organization orgs.openova.io/v1, Environment and EnvironmentPolicy catalyst.openova.io/v1, Continuum dr.openova.io/v1)"
                )));
                continue;
            }
            if let Err(invalid) = validator.validate(&value) {
                for e in &invalid {
                    errors.push(err(e.to_string()));
                }
                refused.push((
                    kind.to_owned(),
                    value["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                ));
                continue;
            }
            let r = match kind {
                "Organization" => typed(&value).map(|o| out.organizations.push(o)),
                "Environment" => typed(&value).map(|o| out.environments.push(o)),
                "EnvironmentPolicy" => typed(&value).map(|o| out.environment_policies.push(o)),
                _ => typed(&value).map(|o| out.continuums.push(o)),
            };
            if let Err(e) = r {
                errors.push(err(e));
            }
        }
    }
    // Keep the last good version of refused resources.
    for (kind, name) in refused {
        match kind.as_str() {
            "Organization" => keep(&mut out.organizations, &previous.organizations, &name),
            "Environment" => keep(&mut out.environments, &previous.environments, &name),
            "EnvironmentPolicy" => keep(
                &mut out.environment_policies,
                &previous.environment_policies,
                &name,
            ),
            _ => keep(&mut out.continuums, &previous.continuums, &name),
        }
    }
    (out, errors)
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn keep<T: ResourceExt + Clone>(now: &mut Vec<T>, before: &[T], name: &str) {
    if now.iter().any(|o| o.name_any() == name) {
        return;
    }
    if let Some(old) = before.iter().find(|o| o.name_any() == name) {
        now.push(old.clone());
    }
}

fn file_name(key: &ObjectKey) -> String {
    format!(
        "{}-{}-{}.yaml",
        key.kind.to_lowercase(),
        key.namespace.as_deref().unwrap_or("_cluster"),
        key.name
    )
}

fn dir_of(out: &Path, key: &ObjectKey) -> PathBuf {
    if key.api_version.starts_with("cilium.io/") {
        out.join("policies")
    } else {
        out.join("objects")
    }
}

/// Writes `contents` to `path` atomically (temporary file + rename): a reader such as the agent
/// never sees half a file.
fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// The live objects of the output directory: every file the controllers wrote.
fn observed(out: &Path) -> Vec<(PathBuf, Value)> {
    let mut v = Vec::new();
    for sub in ["policies", "objects"] {
        for f in yaml_files(&out.join(sub)).unwrap_or_default() {
            if let Some(val) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|t| serde_norway::from_str::<Value>(&t).ok())
            {
                v.push((f, val));
            }
        }
    }
    v
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects written (created or put back).
    pub written: usize,
    /// Objects removed or released.
    pub pruned: usize,
    /// Objects already as desired.
    pub unchanged: usize,
}

/// One reconcile pass of every controller over `inputs`, executed on `out`.
pub fn reconcile(
    inputs: &Inputs,
    cfg: &TenancyConfig,
    out: &Path,
    metrics: &Metrics,
) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    for sub in ["policies", "objects", "status"] {
        std::fs::create_dir_all(out.join(sub))
            .with_context(|| format!("cannot create `{}`", out.join(sub).display()))?;
    }
    let live = observed(out);
    let mut by_owner: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (_, v) in &live {
        if v["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGER {
            let owner = v["metadata"]["labels"][OWNER_LABEL]
                .as_str()
                .unwrap_or("")
                .to_owned();
            by_owner.entry(owner).or_default().push(v.clone());
        }
    }
    let world = World::new(&inputs.organizations, &inputs.environments);
    let mut report = Report::default();
    let mut owners: Vec<String> = inputs
        .organizations
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    owners.extend(
        by_owner
            .keys()
            .filter(|o| !inputs.organizations.iter().any(|x| &x.name_any() == *o))
            .cloned(),
    );
    for owner in owners {
        let started = Instant::now();
        let org = inputs.organizations.iter().find(|o| o.name_any() == owner);
        let desired: Vec<Generated> = match org {
            Some(o) if cfg.enabled => tenancy::desired(o, &world, cfg),
            _ => Vec::new(),
        };
        let p = plan(
            &desired,
            by_owner.get(&owner).map_or(&[][..], Vec::as_slice),
        );
        for g in &p.create {
            write_object(out, g)?;
            info!(organization = %owner, object = %g.key, "created");
        }
        for (g, why) in &p.update {
            write_object(out, g)?;
            metrics.drift_corrected("tenancy");
            warn!(organization = %owner, object = %g.key, %why, "changed by someone else; put back");
        }
        for (key, action) in &p.prune {
            let path = dir_of(out, key).join(file_name(key));
            match action {
                PruneAction::Delete => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot remove `{}`", path.display()));
                    }
                },
                PruneAction::Release => {
                    let bare = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key.name}});
                    write_atomic(&path, &serde_norway::to_string(&bare)?)?;
                }
            }
            info!(organization = %owner, object = %key, ?action, "pruned");
        }
        metrics.reconciled("tenancy", started.elapsed(), &p);
        report.written += p.create.len() + p.update.len();
        report.pruned += p.prune.len();
        report.unchanged += p.unchanged;
        if let Some(o) = org {
            write_status(out, o, &world, desired.len())?;
        } else {
            let _ = std::fs::remove_file(
                out.join("status")
                    .join(format!("organization-{owner}.yaml")),
            );
        }
    }
    Ok(report)
}

fn write_object(out: &Path, g: &Generated) -> anyhow::Result<()> {
    let path = dir_of(out, &g.key).join(file_name(&g.key));
    write_atomic(&path, &serde_norway::to_string(&g.manifest())?)?;
    Ok(())
}

fn write_status(
    out: &Path,
    org: &Organization,
    world: &World<'_>,
    objects: usize,
) -> anyhow::Result<()> {
    let envs = world.environments_of(&org.name_any());
    let status = crate::crd::OrganizationStatus {
        observed_generation: org.metadata.generation.unwrap_or(0),
        environments: envs.len() as u32,
        namespaces: envs.iter().map(|e| e.spec.namespaces.len() as u32).sum(),
        generated_objects: objects as u32,
        // The compliance part is the aggregator's file (`organization-<name>.compliance.yaml`).
        ..Default::default()
    };
    let doc = serde_json::json!({
        "apiVersion": "orgs.openova.io/v1",
        "kind": "Organization",
        "metadata": {"name": org.name_any()},
        "status": status,
    });
    write_atomic(
        &out.join("status")
            .join(format!("organization-{}.yaml", org.name_any())),
        &serde_norway::to_string(&doc)?,
    )?;
    Ok(())
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).ok();
            let len = md.as_ref().map_or(0, std::fs::Metadata::len);
            (p, len, md.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Runs standalone mode until `shutdown` resolves (or after one pass with `once`).
pub async fn run(
    cfg: StandaloneConfig,
    tenancy: TenancyConfig,
    metrics: std::sync::Arc<Metrics>,
    once: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let validator = Validator::for_catalyst();
    let mut inputs = Inputs::default();
    let mut last = None;
    loop {
        let fp = fingerprint(&cfg.input);
        if last.as_ref() != Some(&fp) {
            let (next, errors) = load(&cfg.input, &validator, &inputs);
            metrics.set_invalid("standalone", errors.len());
            for e in &errors {
                warn!(error = %e, "resource refused; its last good version stays in force");
            }
            inputs = next;
            let report = reconcile(&inputs, &tenancy, &cfg.output, &metrics)?;
            info!(
                organizations = inputs.organizations.len(),
                environments = inputs.environments.len(),
                written = report.written,
                pruned = report.pruned,
                unchanged = report.unchanged,
                "reconciled"
            );
            metrics.set_ready(true);
            last = Some(fp);
            if once {
                return if errors.is_empty() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("{} resource(s) refused", errors.len()))
                };
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(cfg.interval_ms)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
