//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the bounded fuzzing smoke (fuzz/, cargo fuzz).
//!
//! Builds the targets with nightly and cargo-fuzz (installed into `.tools/cargo-fuzz`), then runs
//! each for at most N seconds on a copy of its committed seeds (`fuzz/seeds/<target>/`; the
//! committed corpus is never grown by a run). A crash fails the run and prints the input and the
//! command that reproduces it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{root, setup};

/// Every fuzz target (fuzz/Cargo.toml).
pub const TARGETS: &[&str] = &[
    "zone_parser",
    "lua_compile",
    "dns_message",
    "policy_yaml",
    "flow_filter",
];

/// Targets that link the embedded Lua interpreter (mlua): `LeakSanitizer` reports the Lua state
/// a thread keeps in thread-local storage until the process exits (16 bytes, not a per-input
/// leak), so leak detection is off for them.
const LUA_TARGETS: &[&str] = &["zone_parser", "lua_compile", "dns_message"];

fn target_dir() -> PathBuf {
    std::env::var_os("CATALYST_FUZZ_TARGET_DIR")
        .map_or_else(|| root().join("fuzz/target"), PathBuf::from)
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![setup::tools().join("cargo-fuzz/bin")];
    paths.extend(std::env::split_paths(&path));
    c.env("PATH", std::env::join_paths(paths).expect("valid PATH"))
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root());
    c.args(["+nightly", "fuzz"]);
    c
}

/// Runs the smoke: `seconds` per target, every target when `targets` is empty.
pub fn fuzz(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target `{t}` (available: {})",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    setup::ensure_cargo_fuzz()?;
    let tdir = target_dir();
    let started = std::time::Instant::now();
    let status = cargo_fuzz()
        .arg("build")
        .arg("--target-dir")
        .arg(&tdir)
        .status()
        .context("cannot start `cargo +nightly fuzz build` (nightly toolchain installed?)")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status}); see the compiler output above");
    }
    eprintln!("fuzz: targets built in {:.0?}", started.elapsed());
    let bin_dir = tdir.join("x86_64-unknown-linux-gnu/release");
    let work = tdir.join("smoke");
    let mut failed = Vec::new();
    for t in targets {
        let corpus = work.join(t).join("corpus");
        let artifacts = work.join(t).join("artifacts");
        let _ = std::fs::remove_dir_all(work.join(t));
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = root().join("fuzz/seeds").join(t);
        for e in
            std::fs::read_dir(&seeds).with_context(|| format!("no seeds in {}", seeds.display()))?
        {
            let p = e?.path();
            if p.is_file() {
                std::fs::copy(&p, corpus.join(p.file_name().expect("file")))?;
            }
        }
        let leaks = if LUA_TARGETS.contains(&t) { "0" } else { "1" };
        // libFuzzer's progress lines (one per new input) go to a log file: a CI log keeps only its
        // tail, and the crash report must be in it, not thousands of progress lines.
        let log_path = work.join(t).join("libfuzzer.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        eprintln!(
            "fuzz: {t} for {seconds} s (libFuzzer output: {})",
            log_path.display()
        );
        let status = Command::new(bin_dir.join(t))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-detect_leaks={leaks}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("cannot run fuzz target {t}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(done) = text.lines().rev().find(|l| l.starts_with("Done ")) {
            eprintln!("fuzz: {t}: {done}");
        }
        if !status.success() {
            eprintln!("fuzz: {t} failed ({status}); the end of its libFuzzer output:");
            for l in crash_report(&text) {
                eprintln!("  | {l}");
            }
            let found: Vec<PathBuf> = std::fs::read_dir(&artifacts)?
                .flatten()
                .map(|e| e.path())
                .collect();
            for a in &found {
                eprintln!(
                    "fuzz: {t} crashed on {}\n  reproduce: cargo +nightly fuzz run {t} {} -- -detect_leaks={leaks}\n  \
                     then fix the bug, add the input as a test in the owning crate and copy it to fuzz/seeds/{t}/",
                    a.display(),
                    a.display()
                );
            }
            failed.push(t);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The part of a libFuzzer log that explains a failure: from the first line of the report (a
/// panic message, a sanitizer or libFuzzer error) to the end, at most 80 lines; the last 40 lines
/// when no report marker is found.
fn crash_report(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            l.contains("panicked at") || l.starts_with("==") || l.contains("ERROR: libFuzzer")
        })
        .unwrap_or_else(|| lines.len().saturating_sub(40));
    lines[start..].iter().take(80).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::crash_report;

    #[test]
    fn the_crash_report_starts_at_the_panic_and_skips_progress_lines() {
        let mut log = (0..1000)
            .map(|i| format!("#{i}\tNEW    cov: 1"))
            .collect::<Vec<_>>()
            .join("\n");
        log.push('\n');
        log.push_str("thread '<unnamed>' panicked at dns/src/x.rs:1:2:\nboom\n==1== ERROR: libFuzzer: deadly signal\n");
        let r = crash_report(&log);
        assert_eq!(r[0], "thread '<unnamed>' panicked at dns/src/x.rs:1:2:");
        assert_eq!(r.len(), 3);
        let quiet = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let r = crash_report(&quiet);
        assert_eq!((r.len(), r[0]), (40, "line 60"));
    }
}
