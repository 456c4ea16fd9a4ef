//! `cargo xtask test`.
//!
//! Both forms run `cargo test --workspace` under the workspace's one test convention
//! (`catalyst_tests::require`, switched by `CATALYST_TEST_MODE`): `--unit-only` runs exactly the
//! tests that need nothing from the machine (every other test prints one `SKIPPED` line); the
//! full run sets the toolchain and packages up first and fails any test whose needs (root, the
//! eBPF object, nats-server, `PowerDNS`, Chromium, …) are not met. The full run first checks the
//! dependency graph with `cargo deny check bans licenses sources` (deny.toml) and ends with the
//! bounded fuzzing smoke (`cargo xtask fuzz`, 30 s per target; never in `--unit-only`).

use anyhow::bail;

use crate::setup;

/// Seconds per fuzz target in the full run (5 targets: about 2.5 min plus the fuzz build).
const FUZZ_SECONDS: u64 = 30;

/// Runs the suites.
pub fn test(unit_only: bool) -> anyhow::Result<()> {
    if unit_only {
        let mut c = setup::cargo();
        c.args(["test", "--workspace"])
            .env("CATALYST_TEST_MODE", "unit");
        if !c.status()?.success() {
            bail!("unit tests failed");
        }
        return Ok(());
    }
    setup::setup(true, true)?;
    setup::deny_check()?;
    setup::cargo_build(false)?;
    let mut c = setup::cargo();
    // One test thread: the lab suites take the lab one at a time (`catalyst_tests::lab::lock`).
    c.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .env("CATALYST_TEST_MODE", "full");
    let tests_ok = c.status()?.success();
    // The bounded fuzzing smoke (docs/testing.md): 30 s per target on the committed seeds.
    let fuzz = crate::fuzz::fuzz(FUZZ_SECONDS, &[]);
    if !tests_ok {
        bail!("tests failed");
    }
    fuzz
}
