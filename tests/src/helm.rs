//! A renderer for the Helm chart (deploy/helm/catalyst) without helm: `helm` is not installable
//! on the build machines, so this handles the subset of Go templates the chart uses
//! (`.Values`/`.Release`/`.Chart` paths, `quote`, `default`, `toYaml`, `nindent`,
//! `if`/`else`/`end`)
//! and fails on anything else. Go template semantics beyond that subset, `helm lint` and
//! `helm install` are not verified here.
#![allow(
    clippy::missing_panics_doc,
    reason = "a test harness: panics are how it reports"
)]

use std::path::{Path, PathBuf};

use serde_norway::Value;

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/catalyst")
}

fn lookup<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut v = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = v.get(part).unwrap_or(&Value::Null);
    }
    v
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

/// A scalar value as text.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

struct Context {
    values: Value,
    release: Value,
    chart: Value,
}

impl Context {
    fn operand(&self, token: &str) -> Value {
        if let Some(s) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Value::String(s.to_owned());
        }
        if let Some(p) = token.strip_prefix(".Values") {
            return lookup(&self.values, p).clone();
        }
        if let Some(p) = token.strip_prefix(".Release") {
            return lookup(&self.release, p).clone();
        }
        if let Some(p) = token.strip_prefix(".Chart") {
            return lookup(&self.chart, p).clone();
        }
        panic!("unsupported operand `{token}`");
    }

    /// Evaluates a pipeline to text.
    fn eval(&self, expr: &str) -> String {
        let mut stages = expr.split('|').map(str::trim);
        let first = stages.next().unwrap();
        let (mut value, mut text) = match first.split_once(' ') {
            Some(("toYaml", arg)) => {
                let v = self.operand(arg.trim());
                let y = serde_norway::to_string(&v).unwrap();
                (None, Some(y.trim_end().to_owned()))
            }
            Some((f, _)) => panic!("unsupported function `{f}`"),
            None => (Some(self.operand(first)), None),
        };
        for stage in stages {
            let (f, arg) = stage.split_once(' ').unwrap_or((stage, ""));
            match f {
                "default" => {
                    if !value.as_ref().is_some_and(truthy) {
                        value = Some(self.operand(arg.trim()));
                    }
                }
                "quote" => {
                    let s = text
                        .take()
                        .unwrap_or_else(|| scalar(value.as_ref().unwrap()));
                    text = Some(format!("{s:?}"));
                }
                "nindent" => {
                    let n: usize = arg.trim().parse().unwrap();
                    let s = text
                        .take()
                        .unwrap_or_else(|| scalar(value.as_ref().unwrap()));
                    let pad = " ".repeat(n);
                    text = Some(s.lines().fold(String::new(), |mut acc, l| {
                        acc.push('\n');
                        acc.push_str(&pad);
                        acc.push_str(l);
                        acc
                    }));
                }
                other => panic!("unsupported filter `{other}`"),
            }
        }
        text.unwrap_or_else(|| scalar(value.as_ref().unwrap()))
    }

    fn render(&self, template: &str) -> String {
        let mut out = String::new();
        let mut active = vec![true];
        // For each open `if`: whether its enclosing block is active.
        let mut parents: Vec<bool> = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if *active.last().unwrap() {
                out.push_str(&rest[..start]);
            }
            let end = rest[start..].find("}}").expect("unclosed action") + start;
            let mut action = &rest[start + 2..end];
            if let Some(a) = action.strip_prefix('-') {
                action = a;
                if *active.last().unwrap() {
                    let trimmed = out.trim_end().len();
                    out.truncate(trimmed);
                }
            }
            let action = action.trim();
            if let Some(cond) = action.strip_prefix("if ") {
                let parent = *active.last().unwrap();
                let on = parent && truthy(&self.operand(cond.trim()));
                parents.push(parent);
                active.push(on);
            } else if action == "else" {
                let parent = *parents.last().expect("else without if");
                let taken = active.pop().unwrap();
                active.push(parent && !taken);
            } else if action == "end" {
                active.pop();
                parents.pop();
                assert!(!active.is_empty(), "unbalanced end");
            } else if *active.last().unwrap() {
                out.push_str(&self.eval(action));
            }
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        assert_eq!(active.len(), 1, "unclosed if");
        out
    }
}

/// Renders every template with the chart's values, `overrides` merged on top (`a.b: value`).
pub fn render(overrides: &[(&str, Value)]) -> Vec<Value> {
    let dir = chart_dir();
    let mut values: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    for (path, v) in overrides {
        let mut cur = &mut values;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[parts[parts.len() - 1]] = v.clone();
    }
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let chart = serde_norway::from_str(&format!(
        "{{Name: {}, AppVersion: '{}'}}",
        scalar(&chart["name"]),
        scalar(&chart["appVersion"])
    ))
    .unwrap();
    let ctx = Context {
        values,
        release: serde_norway::from_str("{Name: cat, Namespace: catalyst-system}").unwrap(),
        chart,
    };
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let text = ctx.render(&std::fs::read_to_string(&f).unwrap());
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: rendered YAML invalid: {e}\n{text}", f.display()));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

use serde::Deserialize as _;

/// The first document of `kind`.
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// A sequence of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}
