//! Fault tests of catalyst-dns (issue 16 item 7), each bounded in time:
//!
//! - a zone reload storm under query load: 50 rewrites of a 200-name zone — half replaced
//!   atomically and followed by SIGHUP, half rewritten in place by a slow writer that the
//!   file watcher sees half-written — while four clients query without pause: no query fails,
//!   every answer comes from a complete zone, no client sees an older zone after a newer one;
//! - health-target flapping: a loopback TCP target blinking down for less than
//!   `minimumFailures` checks never flips the answer nor logs a transition; one going down and
//!   up for longer flips the answer each time and logs each transition exactly once;
//! - NATS absent at start and restarted: catalyst-dns serves without NATS, connects when the
//!   server appears, follows KV `dns-failover` and publishes health events; after nats-server
//!   is killed and restarted it reconnects, re-opens its KV watch and publishes again.

#![allow(
    clippy::doc_markdown,
    clippy::cast_possible_truncation,
    clippy::format_push_string,
    reason = "test helpers favour brevity"
)]

mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{op::ResponseCode, rr::RecordType};

/// Names in the storm's zone; each version answers `h<i>` with `10.<version>.<i / 250>.<i % 250>`.
const STORM_NAMES: usize = 200;
const STORM_REWRITES: u8 = 50;

fn storm_zone(version: u8) -> String {
    let mut z = format!(
        "$ORIGIN storm.test.\n$TTL 60\n@ SOA ns hm {version} 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n"
    );
    for i in 0..STORM_NAMES {
        z.push_str(&format!("h{i} A 10.{version}.{}.{}\n", i / 250, i % 250));
    }
    z
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, checked step by step")]
fn reload_storm_under_query_load_never_fails_a_query() {
    let dir = scratch("storm");
    let port = free_port();
    let zf = dir.join("storm.zone");
    std::fs::write(&zf, storm_zone(1)).unwrap();
    // The watcher polls every second as well, so it races the writers.
    let srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("storm.test", &zf)],
            "reload: {watch_interval_secs: 1}\n",
        ),
        port,
    );
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4usize)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad, mut newest) = (0u32, Vec::new(), 1u8);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    // Names from the start, middle and end of the file in turn: a zone read
                    // half-written lacks the later ones.
                    i = (i + 67) % STORM_NAMES;
                    let name = format!("h{i}.storm.test.");
                    match query_raw(port, &name, RecordType::A, None) {
                        Some(m)
                            if m.metadata.response_code == ResponseCode::NoError
                                && m.answers.len() == 1 =>
                        {
                            let ip = m.answers[0].data.to_string();
                            let v: u8 = ip.split('.').nth(1).and_then(|v| v.parse().ok()).unwrap();
                            let want = format!("10.{v}.{}.{}", i / 250, i % 250);
                            if ip != want {
                                bad.push(format!("{name} -> {ip}, want {want}"));
                            } else if v < newest {
                                bad.push(format!("{name} from version {v} after version {newest}"));
                            } else {
                                newest = v;
                                ok += 1;
                            }
                        }
                        other => bad.push(format!(
                            "{name}: {:?}",
                            other.map(|m| (m.metadata.response_code, m.answers.len()))
                        )),
                    }
                }
                (ok, bad, newest)
            })
        })
        .collect();
    for v in 2..=STORM_REWRITES + 1 {
        let text = storm_zone(v);
        if v % 2 == 0 {
            // Atomic replacement, then SIGHUP (what an operator script or a ConfigMap does).
            let tmp = dir.join("storm.zone.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &zf).unwrap();
            srv.signal("HUP");
            std::thread::sleep(Duration::from_millis(60));
        } else {
            // In place by a slow writer (an editor, a copy over a slow link): half, a pause,
            // the rest. Only the file watcher notices it.
            use std::io::Write as _;
            // Whole lines, so the first half alone is a valid zone that lacks half the names.
            let cut = text[..text.len() / 2].rfind('\n').unwrap() + 1;
            let (a, b) = text.split_at(cut);
            let mut f = std::fs::File::create(&zf).unwrap();
            f.write_all(a.as_bytes()).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(150));
            f.write_all(b.as_bytes()).unwrap();
            drop(f);
        }
    }
    srv.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut failures = Vec::new();
    for c in clients {
        let (ok, bad, newest) = c.join().unwrap();
        total += ok;
        failures.extend(bad);
        assert_eq!(
            newest,
            STORM_REWRITES + 1,
            "a client never saw the last version"
        );
    }
    let took = started.elapsed();
    let reloads = srv.log_text().matches("zones reloaded").count();
    eprintln!(
        "reload storm: {STORM_REWRITES} rewrites, {reloads} reloads, {total} queries answered in {took:?}, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed or wrong answers during the storm, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total > 500, "only {total} queries ran");
    assert!(
        reloads >= usize::from(STORM_REWRITES / 2),
        "only {reloads} reloads"
    );
    assert!(took < Duration::from_mins(1), "bounded: took {took:?}");
}

/// The `health transition` log lines of `target` so far, without terminal colours.
fn transitions(srv: &Proc, target: &str) -> Vec<String> {
    srv.log_text()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("health transition") && l.contains(target))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, checked step by step")]
fn health_target_flapping_logs_each_transition_once_and_respects_minimum_failures() {
    let dir = scratch("flap");
    let port = free_port();
    let tport = free_port();
    let (primary, backup) = ("127.0.0.71", "127.0.0.72");
    // Checks every 200 ms; down after 3 failures in a row, up after 1 success.
    let zf = dir.join("flap.zone");
    std::fs::write(
        &zf,
        format!(
            "$ORIGIN flap.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
             svc LUA A \"ifportup({tport}, {{{{'{primary}'}}, {{'{backup}'}}}}, {{interval = 0.2, timeout = 1, minimumFailures = 3}})\"\n"
        ),
    )
    .unwrap();
    let mut target = Some(TcpTarget::start(primary, tport));
    let _backup = TcpTarget::start(backup, tport);
    let srv = start_catalyst(&dir, &config(port, &[("flap.test", &zf)], ""), port);
    let started = Instant::now();
    let q = move || answers(port, "svc.flap.test.", RecordType::A, None);
    let wait_answer = |want: &str, limit: Duration| -> Duration {
        let t = Instant::now();
        loop {
            if q() == vec![want.to_owned()] {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "answer never became {want} within {limit:?}: {:?}",
                q()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // The first query starts the checks; the primary comes up.
    wait_answer(primary, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let base = transitions(&srv, primary).len();
    assert_eq!(
        base,
        1,
        "pending -> up once: {:?}",
        transitions(&srv, primary)
    );

    // Blips shorter than minimumFailures checks: at most 2 checks fail, the third succeeds.
    let answers_seen = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (seen, on) = (answers_seen.clone(), watching.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                *seen.lock().unwrap().entry(q().join(",")).or_default() += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for _ in 0..5 {
        drop(target.take());
        std::thread::sleep(Duration::from_millis(250));
        drop(target.replace(TcpTarget::start(primary, tport)));
        std::thread::sleep(Duration::from_millis(500));
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = answers_seen.lock().unwrap().clone();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![primary],
        "blips shorter than minimumFailures must not move the answer: {seen:?}"
    );
    assert_eq!(
        transitions(&srv, primary).len(),
        base,
        "blips logged transitions: {:?}",
        transitions(&srv, primary)
    );

    // Real flaps: down and up for well over minimumFailures checks, four times.
    let cycles = 4;
    for c in 0..cycles {
        drop(target.take());
        let took = wait_answer(backup, Duration::from_secs(3));
        assert!(
            took < Duration::from_millis(1500),
            "cycle {c}: down after {took:?} (3 checks of 200 ms)"
        );
        std::thread::sleep(Duration::from_millis(300));
        drop(target.replace(TcpTarget::start(primary, tport)));
        let took = wait_answer(primary, Duration::from_secs(3));
        assert!(
            took < Duration::from_secs(1),
            "cycle {c}: up after {took:?} (1 check of 200 ms)"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(target);
    // Each transition once: pending -> up, then down and up per cycle.
    let lines = transitions(&srv, primary);
    let downs = lines.iter().filter(|l| l.contains("to=\"down\"")).count();
    let ups = lines.iter().filter(|l| l.contains("to=\"up\"")).count();
    assert_eq!(
        (downs, ups),
        (cycles, cycles + 1),
        "each transition logged exactly once:\n{}",
        lines.join("\n")
    );
    assert!(
        transitions(&srv, backup).len() == 1,
        "the backup never flapped: {:?}",
        transitions(&srv, backup)
    );
    let took = started.elapsed();
    eprintln!("flapping: {cycles} down/up cycles and 5 blips in {took:?}");
    assert!(took < Duration::from_mins(1), "bounded: took {took:?}");
}

fn start_nats(dir: &std::path::Path, port: u16) -> Proc {
    let log = dir.join("nats.log");
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nats-server");
    let p = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not start: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, checked step by step")]
fn nats_absent_at_start_and_restarted_under_publishing() {
    use futures_util::StreamExt as _;
    if !require(
        "nats_absent_at_start_and_restarted_under_publishing",
        &[Need::NatsServer],
    ) {
        return;
    }
    let dir = scratch("nats-fault");
    let nport = free_port();
    let url = format!("nats://127.0.0.1:{nport}");
    let tport = free_port();
    let mut target = Some(TcpTarget::start("127.0.0.81", tport));
    let zf = dir.join("nf.zone");
    std::fs::write(
        &zf,
        format!(
            "$ORIGIN nf.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n\
             app LUA A \"failover('app', {{eu = {{'192.0.2.1'}}, us = {{'198.51.100.1'}}}}, 'eu')\"\n\
             hc LUA A \"ifportup({tport}, {{'127.0.0.81'}}, {{interval = 0.2, timeout = 1}})\"\n"
        ),
    )
    .unwrap();
    let port = free_port();
    // No nats-server yet: catalyst-dns starts, answers from static fallbacks and keeps trying.
    let started = Instant::now();
    let srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("nf.test", &zf)],
            &format!("nats: {{url: \"{url}\"}}\n"),
        ),
        port,
    );
    assert_eq!(
        answers(port, "app.nf.test.", RecordType::A, None),
        vec!["192.0.2.1"],
        "the static fallback answers without NATS"
    );
    let _ = answers(port, "hc.nf.test.", RecordType::A, None);
    std::thread::sleep(Duration::from_millis(500));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut nats = start_nats(&dir, nport);
    let (client, kv) = rt.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&url)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "dns-failover".into(),
                history: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        (client, kv)
    });
    let mut events = rt.block_on(client.subscribe("catalyst.health.>")).unwrap();
    let wait_for = |want: &str, limit: Duration| {
        let start = Instant::now();
        loop {
            if answers(port, "app.nf.test.", RecordType::A, None) == vec![want.to_owned()] {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "answer never became {want} within {limit:?}\n{}",
                srv.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    // The next event with `status`; earlier ones (the pending -> up of the first check, made
    // while NATS was absent, arrives once catalyst-dns connects) are skipped.
    let next_event = |events: &mut async_nats::Subscriber, status: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = rt
                .block_on(async { tokio::time::timeout(left, events.next()).await })
                .unwrap_or_else(|_| panic!("no health event `{status}` within 10 s"))
                .expect("subscription open");
            let ev: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            if ev["status"] == status {
                return ev;
            }
            eprintln!("health event before `{status}`: {ev}");
        }
    };
    // Connected late: the KV watch opens (the bucket appeared after start) and events flow.
    rt.block_on(kv.put("app", r#"{"active_region":"us","epoch":1}"#.into()))
        .unwrap();
    let late = wait_for("198.51.100.1", Duration::from_secs(15));
    eprintln!("NATS absent at start: KV followed {late:?} after the bucket was written");
    drop(target.take());
    let down = next_event(&mut events, "down");
    assert_eq!(down["previous"], "up", "{down}");
    drop(target.replace(TcpTarget::start("127.0.0.81", tport)));
    let up = next_event(&mut events, "up");
    assert_eq!(up["previous"], "down", "{up}");

    // Outage: nats-server killed by PID, restarted on the same port and store.
    drop(events);
    drop(nats);
    std::thread::sleep(Duration::from_millis(500));
    // DNS keeps answering from the last KV value meanwhile.
    assert_eq!(
        answers(port, "app.nf.test.", RecordType::A, None),
        vec!["198.51.100.1"]
    );
    nats = start_nats(&dir, nport);
    let restarted = Instant::now();
    let mut events = rt.block_on(async {
        // The test's own client reconnects as well; wait until it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            assert!(Instant::now() < deadline, "test client did not reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.subscribe("catalyst.health.>").await.unwrap()
    });
    rt.block_on(kv.put("app", r#"{"active_region":"eu","epoch":2}"#.into()))
        .unwrap();
    let took = wait_for("192.0.2.1", Duration::from_secs(15));
    eprintln!(
        "NATS restarted: KV change followed {took:?} after the put ({:?} after the restart)",
        restarted.elapsed()
    );
    drop(target.take());
    let down = next_event(&mut events, "down");
    assert_eq!(
        (down["status"].as_str(), down["previous"].as_str()),
        (Some("down"), Some("up")),
        "{down}"
    );
    drop(target);
    let log = srv.log_text();
    assert!(!log.contains("panicked"), "catalyst-dns panicked:\n{log}");
    let took = started.elapsed();
    eprintln!("NATS fault test took {took:?}");
    assert!(
        took < Duration::from_mins(1) + Duration::from_secs(30),
        "bounded: took {took:?}"
    );
    drop(nats);
}
