//! `cargo xtask bench controllers`: tenancy reconcile latency and controller memory at scale.

use std::fmt::Write as _;

use super::{example_figures, measured_on, splice_section};

/// Runs the tenancy benchmark (1,000 Organizations × 3 namespaces present, 200 created) and
/// writes the figures to docs/benchmarks.md.
pub fn controllers() -> anyhow::Result<()> {
    eprintln!(
        "bench: tenancy controller (1,000 Organizations × 3 namespaces present, 200 created, mock API)"
    );
    let v = example_figures(
        "catalyst-controllers",
        "tenancy_bench",
        &[
            "--organizations",
            "1000",
            "--namespaces",
            "3",
            "--samples",
            "200",
        ],
    )?;
    let mut md = String::new();
    writeln!(md, "{}", measured_on(", release build"))?;
    writeln!(md, "| measure | value | bar |")?;
    writeln!(md, "|---|---|---|")?;
    for (k, label, bar) in [
        ("organizations", "Organizations present", ""),
        (
            "namespaces_per_organization",
            "namespaces per Organization",
            "",
        ),
        ("live_objects", "generated objects in the stores", ""),
        (
            "objects_per_organization",
            "objects generated per new Organization",
            "",
        ),
        ("samples", "Organizations created (samples)", ""),
        (
            "apply_p50_ms",
            "Organization created → all objects applied + status, p50 (ms)",
            "",
        ),
        (
            "apply_p99_ms",
            "**Organization created → all objects applied + status, p99 (ms)**",
            "≤ 1000",
        ),
        ("core_p50_ms", "pure core (desired + plan), p50 (ms)", ""),
        ("core_p99_ms", "pure core (desired + plan), p99 (ms)", ""),
        ("rss_mib", "**RSS at the end (MiB)**", "≤ 128"),
        ("hwm_mib", "peak RSS (MiB)", ""),
    ] {
        writeln!(md, "| {label} | {} | {bar} |", v[k])?;
    }
    println!("{md}");
    splice_section("controllers", &md)
}
