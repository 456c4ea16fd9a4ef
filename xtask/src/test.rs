//! `cargo xtask test`.

use anyhow::bail;

use crate::setup;

/// Runs the suites.
pub fn test(unit_only: bool) -> anyhow::Result<()> {
    if unit_only {
        let mut c = setup::cargo();
        c.args(["test", "--workspace"])
            .env("CATALYST_SKIP_EBPF", "1")
            .env("CATALYST_UNIT_ONLY", "1");
        if !c.status()?.success() {
            bail!("unit tests failed");
        }
        return Ok(());
    }
    setup::setup(true, true)?;
    setup::cargo_build(false)?;
    let mut c = setup::cargo();
    // The eBPF crate only builds for bpfel-unknown-none (agent/build.rs does that).
    c.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--exclude",
        "catalyst-agent-ebpf",
        "--",
        "--test-threads=1",
    ]);
    if !c.status()?.success() {
        bail!("tests failed");
    }
    Ok(())
}
