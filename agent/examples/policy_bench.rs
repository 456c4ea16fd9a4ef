//! Policy engine benchmark (root): compile time for 1,000 endpoints × 5,000 rules, map-entry
//! counts versus rule counts, and the policy implementation delay — a changed policy object
//! observed → parsed → compiled incrementally → applied to the real (pinned, test-only) maps as
//! a diff — p50/p99 over 200 changes at 1,000 endpoints; the same for 100 pod events (a pod with
//! a new identity added, then removed); a full recompilation as the baseline. Prints one JSON
//! object.
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
    CidrAllocator, CompileInput, Endpoint, Engine, LabelSet, LocalAllocator, PolicySet,
    compile_with, labels::SOURCE_K8S,
};

const ENDPOINTS: u32 = 1_000;
const POLICIES: u32 = 500;
const RULES_PER_POLICY: u32 = 10;
/// Policy changes measured.
const CHANGES: u32 = 200;
/// Pods added and removed again (two measurements each).
const POD_CHANGES: u32 = 50;

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

fn desired(e: &Engine) -> DesiredState {
    DesiredState::from_engine(e, 0, 1_000_000_000)
}

/// The `per_mille`-th permille of `v`, in milliseconds (nearest rank).
fn pct(v: &mut [Duration], per_mille: usize) -> f64 {
    v.sort();
    let i = ((v.len() - 1) * per_mille).div_ceil(1000);
    v[i].as_secs_f64() * 1e3
}

/// A pod that is not there at the start: labels of an existing app and tier plus a unique
/// `pod-template-hash`, so it brings a new identity that the tier selectors of many policies
/// select (the broadest change a pod event can cause).
fn new_pod(k: u32) -> Endpoint {
    let labels = LabelSet::parse(
        [
            format!("app=app{}", k % 100).as_str(),
            format!("tier=t{}", k % 3).as_str(),
            format!("pod-template-hash=h{k}").as_str(),
        ],
        SOURCE_K8S,
    )
    .unwrap();
    Endpoint::new(
        200_000 + k,
        format!("new{k}"),
        format!("ns{}", k % 10),
        labels,
        vec![IpAddr::V4(Ipv4Addr::new(
            10,
            99,
            (k / 250) as u8,
            (k % 250) as u8,
        ))],
    )
}

struct Delays {
    total: Vec<Duration>,
    compile: Vec<Duration>,
    recompiled: Vec<usize>,
}

impl Delays {
    fn new() -> Self {
        Self {
            total: Vec::new(),
            compile: Vec::new(),
            recompiled: Vec::new(),
        }
    }

    fn json(&mut self, name: &str) -> String {
        let mut r = self.recompiled.clone();
        r.sort_unstable();
        format!(
            "\"{name}_changes\":{},\"{name}_delay_p50_ms\":{:.2},\"{name}_delay_p99_ms\":{:.2},\"{name}_compile_p50_ms\":{:.2},\"{name}_endpoints_recompiled_p50\":{}",
            self.total.len(),
            pct(&mut self.total.clone(), 500),
            pct(&mut self.total, 990),
            pct(&mut self.compile, 500),
            r[r.len() / 2]
        )
    }
}

fn main() -> anyhow::Result<()> {
    let eps = endpoints();
    let texts: Vec<String> = (0..POLICIES).map(|p| policy(p, 0)).collect();
    let t = Instant::now();
    let policies = PolicySet::parse_str("bench.yaml", &texts.join("---\n"))?.into_policies();
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut labels = LocalAllocator::new();
    let mut cidrs = CidrAllocator::new();
    let mut input = CompileInput {
        endpoints: eps,
        peers: vec![],
        policies,
        global_audit: false,
    };
    let t = Instant::now();
    let mut engine = Engine::new();
    engine.update(&input, &mut labels, &mut cidrs)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let entries = engine.policy_len();
    eprintln!("parse {parse_ms:.0} ms, compile {compile_ms:.0} ms, {entries} policy entries");

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
        let mut applied = desired(&engine);
        apply(&mut dp, &applied, true)?;
        let initial_apply_ms = t.elapsed().as_secs_f64() * 1e3;

        // One policy object changed (its ports shift): the change observed → that object
        // parsed → incremental compile → diff applied to the maps.
        let mut policy_changes = Delays::new();
        for c in 0..CHANGES {
            let p = (c * 37) % POLICIES;
            let text = policy(p, c + 1);
            let t = Instant::now();
            let mut changed = PolicySet::parse_str(&format!("p{p}.yaml"), &text)?.into_policies();
            input.policies[p as usize] = changed.remove(0);
            let stats = engine.update(&input, &mut labels, &mut cidrs)?;
            policy_changes.compile.push(t.elapsed());
            let next = desired(&engine);
            apply_diff(&mut dp, Some(&applied), &next, false)?;
            policy_changes.total.push(t.elapsed());
            policy_changes.recompiled.push(stats.endpoints_recompiled);
            applied = next;
        }

        // A pod with a new identity appears, then goes away.
        let mut pod_changes = Delays::new();
        for k in 0..POD_CHANGES {
            for add in [true, false] {
                let t = Instant::now();
                if add {
                    input.endpoints.push(new_pod(k));
                } else {
                    input.endpoints.pop();
                }
                let stats = engine.update(&input, &mut labels, &mut cidrs)?;
                pod_changes.compile.push(t.elapsed());
                let next = desired(&engine);
                apply_diff(&mut dp, Some(&applied), &next, false)?;
                pod_changes.total.push(t.elapsed());
                pod_changes.recompiled.push(stats.endpoints_recompiled);
                applied = next;
            }
        }

        // Baseline in the same run: a full recompilation of the same input.
        let t = Instant::now();
        let full = compile_with(&input, &mut labels, &mut cidrs)?;
        let full_ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            full.policy().len() == engine.policy_len(),
            "incremental state has {} entries, a full compile {}",
            engine.policy_len(),
            full.policy().len()
        );
        Ok(format!(
            "\"initial_apply_ms\":{initial_apply_ms:.1},\"full_recompile_ms\":{full_ms:.1},{},{}",
            policy_changes.json("policy"),
            pod_changes.json("pod")
        ))
    })();
    uninstall(&pin)?;
    let timing = result?;
    println!(
        "{{\"endpoints\":{ENDPOINTS},\"policies\":{POLICIES},\"rules\":{},\"policy_entries\":{entries},\"ipcache_entries\":{},\"identities\":{},\"parse_ms\":{parse_ms:.1},\"compile_ms\":{compile_ms:.1},{timing}}}",
        POLICIES * (RULES_PER_POLICY + 1),
        engine.ipcache_v4().len() + engine.ipcache_v6().len(),
        engine.identities().len()
    );
    Ok(())
}
