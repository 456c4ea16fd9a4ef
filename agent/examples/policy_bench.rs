//! Policy engine benchmark (root): compile time for 1,000 endpoints × 5,000 rules, map-entry
//! counts versus rule counts, and the policy implementation delay — a policy change observed →
//! compiled → applied to the real (pinned, test-only) maps as a diff — p50/p99 over 200 changes
//! at 1,000 endpoints. Prints one JSON object.
//!
//! Used by `cargo xtask bench policy`; alone: `cargo run -p catalyst-agent --example policy_bench`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use catalyst_agent::{
    config::MapSizes,
    datapath::{AttachMode, Datapath, DesiredState, LoadOptions, apply, apply_diff, uninstall},
};
use catalyst_policy::{
    CidrAllocator, CompileInput, Compiled, Endpoint, LabelSet, LocalAllocator, PolicySet,
    compile_with, labels::SOURCE_K8S,
};

const ENDPOINTS: u32 = 1_000;
const POLICIES: u32 = 500;
const RULES_PER_POLICY: u32 = 10;
/// Each change recompiles everything today (seconds at this size), so 20 changes bound the run.
const CHANGES: u32 = 20;

fn endpoints() -> Vec<Endpoint> {
    (0..ENDPOINTS)
        .map(|i| {
            let labels = LabelSet::parse(
                [
                    format!("app=app{}", i % 100).as_str(),
                    format!("tier=t{}", i % 3).as_str(),
                ],
                SOURCE_K8S,
            )
            .unwrap();
            let ip = Ipv4Addr::new(10, 100 + (i / 250) as u8, (i % 250) as u8, 10);
            Endpoint::new(
                100_000 + i,
                format!("pod{i}"),
                format!("ns{}", i % 10),
                labels,
                vec![IpAddr::V4(ip)],
            )
        })
        .collect()
}

/// Policy `p` with 10 rules; `variant` shifts its ports (a change).
fn policy(p: u32, variant: u32) -> String {
    let mut s = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{p}, namespace: ns{}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n",
        p % 10,
        p % 100
    );
    for r in 0..RULES_PER_POLICY {
        let port = 1000 + (p * 7 + r * 13 + variant) % 5000;
        match r % 5 {
            0 | 1 => {
                let _ = writeln!(
                    s,
                    "    - fromEndpoints: [{{matchLabels: {{app: app{}}}}}]\n      toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]",
                    (p + r + 1) % 100
                );
            }
            2 => {
                let _ = writeln!(
                    s,
                    "    - fromEndpoints: [{{matchLabels: {{tier: t{}}}}}]\n      toPorts: [{{ports: [{{port: \"{port}\", endPort: {}, protocol: TCP}}]}}]",
                    r % 3,
                    port + 100
                );
            }
            3 => {
                let _ = writeln!(
                    s,
                    "    - fromCIDRSet: [{{cidr: 198.{}.0.0/16, except: [198.{}.1.0/24]}}]\n      toPorts: [{{ports: [{{port: \"{port}\", protocol: ANY}}]}}]",
                    18 + p % 2,
                    18 + p % 2
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "    - fromEntities: [world]\n      toPorts: [{{ports: [{{port: \"{port}\", protocol: UDP}}]}}]"
                );
            }
        }
    }
    s.push_str("  ingressDeny:\n");
    let _ = writeln!(
        s,
        "    - fromEndpoints: [{{matchLabels: {{app: app{}}}}}]\n      toPorts: [{{ports: [{{port: \"22\", protocol: TCP}}]}}]",
        (p + 50) % 100
    );
    s
}

fn desired(c: &Compiled) -> DesiredState {
    DesiredState::from_compiled(c, 0, 1_000_000_000)
}

/// The `per_mille`-th permille of `v`, in milliseconds (nearest rank).
fn pct(v: &mut [Duration], per_mille: usize) -> f64 {
    v.sort();
    let i = ((v.len() - 1) * per_mille).div_ceil(1000);
    v[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let eps = endpoints();
    let mut texts: Vec<String> = (0..POLICIES).map(|p| policy(p, 0)).collect();
    let parse = |texts: &[String]| -> anyhow::Result<Vec<catalyst_policy::Policy>> {
        Ok(PolicySet::parse_str("bench.yaml", &texts.join("---\n"))?.into_policies())
    };
    let t = Instant::now();
    let policies = parse(&texts)?;
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut labels = LocalAllocator::new();
    let mut cidrs = CidrAllocator::new();
    let input = CompileInput {
        endpoints: eps.clone(),
        peers: vec![],
        policies,
        global_audit: false,
    };
    let t = Instant::now();
    let compiled = compile_with(&input, &mut labels, &mut cidrs)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "parse {parse_ms:.0} ms, compile {compile_ms:.0} ms, {} policy entries",
        compiled.policy().len()
    );

    let pin = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/catalyst-policy-bench-{}",
        std::process::id()
    ));
    let _ = uninstall(&pin);
    let result = (|| -> anyhow::Result<String> {
        let sizes = MapSizes {
            policy: 1 << 20,
            endpoints: 4096,
            ..MapSizes::default()
        };
        let mut dp = Datapath::load(&LoadOptions {
            pin_path: pin.clone(),
            sizes,
            attach_mode: AttachMode::Auto,
        })?;
        let t = Instant::now();
        let mut applied = desired(&compiled);
        apply(&mut dp, &applied, true)?;
        let initial_apply_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut delays = Vec::new();
        let mut compile_only = Vec::new();
        for c in 0..CHANGES {
            let p = (c * 37) % POLICIES;
            texts[p as usize] = policy(p, c + 1);
            // Change observed → parse → compile → diff applied to the maps.
            let t = Instant::now();
            let input = CompileInput {
                endpoints: eps.clone(),
                peers: vec![],
                policies: parse(&texts)?,
                global_audit: false,
            };
            let compiled = compile_with(&input, &mut labels, &mut cidrs)?;
            compile_only.push(t.elapsed());
            let next = desired(&compiled);
            apply_diff(&mut dp, Some(&applied), &next, false)?;
            delays.push(t.elapsed());
            applied = next;
        }
        Ok(format!(
            "\"initial_apply_ms\":{initial_apply_ms:.1},\"delay_p50_ms\":{:.1},\"delay_p99_ms\":{:.1},\"parse_compile_p50_ms\":{:.1},\"changes\":{CHANGES}",
            pct(&mut delays.clone(), 500),
            pct(&mut delays, 990),
            pct(&mut compile_only, 500)
        ))
    })();
    uninstall(&pin)?;
    let timing = result?;
    let ranges = input.policies.len();
    println!(
        "{{\"endpoints\":{ENDPOINTS},\"policies\":{ranges},\"rules\":{},\"policy_entries\":{},\"ipcache_entries\":{},\"identities\":{},\"parse_ms\":{parse_ms:.1},\"compile_ms\":{compile_ms:.1},{timing}}}",
        POLICIES * (RULES_PER_POLICY + 1),
        compiled.policy().len(),
        compiled.ipcache_v4().len() + compiled.ipcache_v6().len(),
        compiled.identities().len()
    );
    Ok(())
}
