//! `cargo xtask demo`: the README's first command.

mod compliance;

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use catalyst_tests::{
    agent::{AgentProcess, agent_bin},
    lab::{self, WORLD_ADDRS, pod, world_ns},
    probe::{EchoServer, tcp_echo, udp_echo},
};

use crate::{root, setup};

struct Case {
    what: &'static str,
    from: &'static str,
    to: String,
    port: u16,
    udp: bool,
    expect: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the demo; tears everything down on the way out, also after a failure.
pub fn demo() -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "the demo creates network namespaces and loads eBPF: run it as root"
    );
    setup::setup(true, true)?;
    setup::cargo_build(false)?;
    let config = root().join("deploy/examples/agent/agent.yaml");
    let pin = Path::new("/sys/fs/bpf/catalyst-lab");
    let lock = lab::lock()?;
    let result = run_demo(&config, pin);
    let _ = catalyst_tests::agent::uninstall(pin);
    let down = lab::down();
    drop(lock);
    result.and(down)
}

fn run_demo(config: &Path, pin: &Path) -> anyhow::Result<()> {
    println!(
        "== lab: node namespace + pods client, web, db (namespace shop), other (namespace other), world"
    );
    lab::up()?;
    let _ = catalyst_tests::agent::uninstall(pin);
    println!(
        "== agent: {} run --config {}",
        agent_bin().display(),
        config.display()
    );
    let mut agent = AgentProcess::start(config, pin)?;
    let web = pod("web");
    let db = pod("db");
    let _s1 = EchoServer::start(&web.netns(), web.ipv4, &[80, 8080, 22])?;
    let _s2 = EchoServer::start(&db.netns(), db.ipv4, &[5432])?;
    let _s3 = EchoServer::start(world_ns(), WORLD_ADDRS[0], &[443])?;
    let _s4 = EchoServer::start(world_ns(), WORLD_ADDRS[1], &[443])?;
    let cases = [
        Case {
            what: "client -> web:80 (web-ingress allows app=client)",
            from: "client",
            to: web.ipv4.into(),
            port: 80,
            udp: false,
            expect: true,
        },
        Case {
            what: "client -> web:8080 (port range 8000-8099)",
            from: "client",
            to: web.ipv4.into(),
            port: 8080,
            udp: false,
            expect: true,
        },
        Case {
            what: "client -> web:22 (web ingress default deny, 133)",
            from: "client",
            to: web.ipv4.into(),
            port: 22,
            udp: false,
            expect: false,
        },
        Case {
            what: "web -> db:5432 (db-ingress allows app=web)",
            from: "web",
            to: db.ipv4.into(),
            port: 5432,
            udp: false,
            expect: true,
        },
        Case {
            what: "client -> db:5432 (client egressDeny beats allow, 181)",
            from: "client",
            to: db.ipv4.into(),
            port: 5432,
            udp: false,
            expect: false,
        },
        Case {
            what: "other/client -> web:80 (peers default to the policy's namespace)",
            from: "other",
            to: web.ipv4.into(),
            port: 80,
            udp: false,
            expect: false,
        },
        Case {
            what: "client -> world 198.51.100.10:443 (toCIDRSet)",
            from: "client",
            to: WORLD_ADDRS[0].into(),
            port: 443,
            udp: false,
            expect: true,
        },
        Case {
            what: "client -> world 198.51.100.20:443 (in `except`)",
            from: "client",
            to: WORLD_ADDRS[1].into(),
            port: 443,
            udp: false,
            expect: false,
        },
        Case {
            what: "web -> world 198.51.100.10:443 (web has no egress policy)",
            from: "web",
            to: WORLD_ADDRS[0].into(),
            port: 443,
            udp: false,
            expect: true,
        },
        Case {
            what: "client -> web:80/udp (only TCP allowed)",
            from: "client",
            to: web.ipv4.into(),
            port: 80,
            udp: true,
            expect: false,
        },
    ];
    println!("== traffic");
    let mut failures = 0;
    for c in &cases {
        let ns = pod(c.from).netns();
        let t = Duration::from_millis(700);
        let ok = if c.udp {
            udp_echo(&ns, &c.to, c.port, t)?
        } else {
            tcp_echo(&ns, &c.to, c.port, t)?
        };
        let mark = if ok == c.expect {
            "ok "
        } else {
            failures += 1;
            "BAD"
        };
        println!(
            "  [{mark}] {:<62} {}",
            c.what,
            if ok { "connected" } else { "blocked" }
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    println!("== flows (hubble observe format)");
    for line in agent.stdout_lines() {
        println!("  {line}");
    }
    println!("== datapath counters");
    let out = Command::new(agent_bin())
        .args(["counters", "--pin-path"])
        .arg(pin)
        .output()
        .context("counters")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "== catalyst-agent observe --last 8 (Hubble Observer API over the agent's UNIX socket)"
    );
    match Command::new(agent_bin())
        .args(["observe", "--last", "8"])
        .output()
    {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                println!(
                    "  observe failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Err(e) => println!("  cannot run observe: {e}"),
    }
    agent.stop()?;
    failures += tenancy_demo(config, pin)?;
    failures += compliance::demo(config, pin)?;
    dns_demo()?;
    anyhow::ensure!(
        failures == 0,
        "{failures} traffic cases or score changes did not behave as the policies say"
    );
    println!(
        "== demo ok: every allowed flow connected, every denied flow was dropped, the score followed the policy and the drops"
    );
    Ok(())
}

/// catalyst-controllers (standalone) renders the lab's Organizations into Cilium policies; the
/// agent restarts with them (adopting its pinned state) and the namespaces' generated labels;
/// traffic shows the isolation. Returns the number of cases that did not behave.
fn tenancy_demo(agent_config: &Path, pin: &Path) -> anyhow::Result<usize> {
    let bin = agent_bin().with_file_name("catalyst-controllers");
    let work = std::env::temp_dir().join(format!("catalyst-demo-tenancy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = tenancy_demo_in(&bin, &work, agent_config, pin);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tenancy_demo_in(
    bin: &Path,
    work: &Path,
    agent_config: &Path,
    pin: &Path,
) -> anyhow::Result<usize> {
    let resources = root().join("deploy/examples/controllers/lab");
    let config = work.join("controllers.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: standalone\nmetrics: {{listen_address: \"127.0.0.1:0\"}}\nstandalone: {{input: {}, output: {}}}\n",
            resources.display(),
            work.join("out").display()
        ),
    )?;
    println!(
        "== tenancy: {} run --once --config {}",
        bin.display(),
        config.display()
    );
    let status = Command::new(bin)
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    anyhow::ensure!(status.success(), "catalyst-controllers failed ({status})");
    let mut generated: Vec<String> = Vec::new();
    for sub in ["objects", "policies"] {
        for e in std::fs::read_dir(work.join("out").join(sub))?.flatten() {
            generated.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    generated.sort();
    for g in &generated {
        println!("  generated {g}");
    }
    // The agent in standalone mode learns namespace labels from its config: take them from the
    // generated Namespace objects, as Kubernetes mode takes them from the API.
    let mut cfg: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(agent_config)?)?;
    let base = agent_config.parent().unwrap_or(Path::new("."));
    let policies: Vec<serde_norway::Value> = cfg["policy_paths"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            p.as_str()
                .map(|p| base.join(p).display().to_string().into())
        })
        .chain([work.join("out/policies").display().to_string().into()])
        .collect();
    cfg["policy_paths"] = serde_norway::Value::Sequence(policies);
    let flow_log = work.join("flows.jsonl");
    cfg["flow_log"] = flow_log.display().to_string().into();
    for ep in cfg["endpoints"].as_sequence_mut().into_iter().flatten() {
        let ns = ep["namespace"].as_str().unwrap_or("default").to_owned();
        let file = work
            .join("out/objects")
            .join(format!("namespace-_cluster-{ns}.yaml"));
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let nsobj: serde_norway::Value = serde_norway::from_str(&text)?;
        if let (Some(labels), Some(map)) = (
            nsobj["metadata"]["labels"].as_mapping(),
            ep["labels"].as_mapping_mut(),
        ) {
            for (k, v) in labels {
                if let Some(k) = k.as_str() {
                    map.insert(
                        format!("io.cilium.k8s.namespace.labels.{k}").into(),
                        v.clone(),
                    );
                }
            }
        }
    }
    let tenant_config = work.join("agent.yaml");
    std::fs::write(&tenant_config, serde_norway::to_string(&cfg)?)?;
    println!("== agent restarted with the generated policies (pinned state adopted)");
    let mut agent = AgentProcess::start(&tenant_config, pin)?;
    // The echo servers of the first phase (web 80/8080, world 443) are still running.
    let web = pod("web");
    let cases = [
        (
            "client -> web:80 (within Organization acme)",
            "client",
            web.ipv4,
            80,
            true,
        ),
        (
            "other -> web:80 (globex -> acme, port not granted: default deny)",
            "other",
            web.ipv4,
            80,
            false,
        ),
        (
            "other -> web:8080 (acme grants globex port 8080)",
            "other",
            web.ipv4,
            8080,
            true,
        ),
        (
            "web -> world 198.51.100.10:443 (tenant default deny)",
            "web",
            WORLD_ADDRS[0],
            443,
            false,
        ),
    ];
    let mut failures = 0;
    for (what, from, to, port, expect) in cases {
        let ok = tcp_echo(&pod(from).netns(), to, port, Duration::from_millis(700))?;
        let mark = if ok == expect {
            "ok "
        } else {
            failures += 1;
            "BAD"
        };
        println!(
            "  [{mark}] {what:<62} {}",
            if ok { "connected" } else { "blocked" }
        );
    }
    println!("== tenancy drop (from the agent's flow log)");
    // Flow records are written in batches: poll the log for a few seconds. acme grants globex a
    // port, so globex is left out of acme's explicit tenant deny: its other ports fall to default
    // deny (133); between tenants without a grant the baseline's deny rule drops (181, naming
    // `catalyst-tenancy-<org>`, as tests/tests/tenancy_lab_root.rs checks).
    let other_ip = pod("other").ipv4;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let found = loop {
        let flows = std::fs::read_to_string(&flow_log).unwrap_or_default();
        let found = flows
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|f| f["event_type"] == "drop" && f["source_ip"] == other_ip);
        if found.is_some() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(f) = found {
        println!(
            "  {}:{} -> {}:{} DROPPED ({} {}){}",
            f["source_ip"].as_str().unwrap_or(""),
            f["source_port"],
            f["destination_ip"].as_str().unwrap_or(""),
            f["destination_port"],
            f["drop_reason"],
            f["drop_reason_desc"].as_str().unwrap_or(""),
            f["denied_by"][0]["name"]
                .as_str()
                .map(|n| format!(" denied by {n}"))
                .unwrap_or_default()
        );
    } else {
        failures += 1;
        println!(
            "  [BAD] no drop of other -> web:80 in {}",
            flow_log.display()
        );
    }
    agent.stop()?;
    Ok(failures)
}

/// catalyst-dns on the example zone (loopback only): static, CNAME, LUA pickers, views, the
/// failover extension, answered to `dig`.
fn dns_demo() -> anyhow::Result<()> {
    let dns_bin = agent_bin().with_file_name("catalyst-dns");
    let config = root().join("deploy/examples/dns/catalyst-dns.yaml");
    println!(
        "== catalyst-dns: {} serve --config {}",
        dns_bin.display(),
        config.display()
    );
    let mut child = Command::new(&dns_bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", dns_bin.display()))?;
    let result = (|| -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect("127.0.0.1:5353").is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "catalyst-dns did not start listening on 127.0.0.1:5353"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, ty) in [
            ("www.example.org", "A"),
            ("alias2.example.org", "A"),
            ("hashed.example.org", "A"),
            ("whashed.example.org", "A"),
            ("everyone.example.org", "A"),
            ("views.example.org", "A"),
            ("inside.example.org", "TXT"),
            ("1-2-3-4.ip.example.org", "A"),
            ("region.example.org", "A"),
            ("app.example.org", "A"),
        ] {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    "5353",
                    "+short",
                    "+time=2",
                    "+tries=1",
                    name,
                    ty,
                ])
                .output()
                .context("cannot run dig (apt-get install bind9-dnsutils)")?;
            let answer = String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', ", ");
            println!("  {name:<26} {ty:<4} {answer}");
        }
        Ok(())
    })();
    let pid = i32::try_from(child.id()).context("pid")?;
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = child.wait();
    result
}

/// `cargo xtask demo-failover`: the Continuum lab (`tests/tests/continuum_lab_root.rs`) with its
/// narration on the terminal; the controllers' and servers' logs stay in the lab folder when a
/// step fails.
pub fn demo_failover() -> anyhow::Result<()> {
    crate::setup::setup(false, true)?;
    crate::setup::cargo_build(false)?;
    let mut c = crate::setup::lab_suite(
        "continuum_lab_root",
        Some("continuum_switchover_and_failover_with_postgres_nats_cluster_and_dns"),
    );
    let status = c.status().context("cannot run the Continuum lab")?;
    anyhow::ensure!(status.success(), "the Continuum lab failed ({status})");
    Ok(())
}
