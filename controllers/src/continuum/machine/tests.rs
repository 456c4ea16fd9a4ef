use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::crd::{ContinuumDns, LeaseSettings, Region, SwitchoverPolicy};

fn spec(primary: &str, failback: bool) -> ContinuumSpec {
    let region = |n: &str| Region {
        name: n.into(),
        endpoints: vec!["192.0.2.1".into()],
        database: None,
        health_sources: Vec::new(),
        http_routes: Vec::new(),
    };
    ContinuumSpec {
        application: "orders".into(),
        regions: vec![region("a"), region("b"), region("c")],
        primary: primary.into(),
        lease: LeaseSettings::default(),
        witness: None,
        switchover: SwitchoverPolicy {
            failback,
            ..SwitchoverPolicy::default()
        },
        dns: ContinuumDns {
            zone: "example.org".into(),
            group: "orders".into(),
            record: "db.example.org".into(),
            ttl: 5,
        },
    }
}

fn view(entries: &[(&str, bool, Option<bool>, u64)]) -> BTreeMap<String, RegionView> {
    entries
        .iter()
        .map(|&(n, up, standby, lag)| {
            (
                n.to_string(),
                RegionView {
                    up,
                    standby,
                    lag_bytes: Some(lag),
                },
            )
        })
        .collect()
}

#[test]
fn steady_when_primary_up() {
    let s = spec("a", false);
    let st = State::initial(&s);
    let v = view(&[("a", true, Some(false), 0), ("b", true, Some(true), 0)]);
    assert_eq!(decide(&s, &st, &v), Decision::Steady);
}

#[test]
fn spec_change_and_request_start_manual_switchovers() {
    let s0 = spec("a", false);
    let st = State::initial(&s0);
    let v = view(&[
        ("a", true, Some(false), 0),
        ("b", true, Some(true), 0),
        ("c", true, None, 0),
    ]);
    let s1 = spec("b", false);
    assert_eq!(
        decide(&s1, &st, &v),
        Decision::Start {
            from: "a".into(),
            to: "b".into(),
            reason: Reason::Manual
        }
    );
    let mut st2 = st.clone();
    st2.request = Some(Request {
        to: "b".into(),
        at_ms: 1,
    });
    assert!(matches!(
        decide(&s0, &st2, &v),
        Decision::Start {
            reason: Reason::Manual,
            ..
        }
    ));
    // A lagging standby blocks a manual switchover.
    let lagging = view(&[("a", true, Some(false), 0), ("b", true, Some(true), 4096)]);
    assert!(matches!(decide(&s1, &st, &lagging), Decision::Blocked(_)));
    // An unknown region is refused with a message.
    st2.request = Some(Request {
        to: "zz".into(),
        at_ms: 1,
    });
    assert!(matches!(decide(&s0, &st2, &v), Decision::Blocked(m) if m.contains("zz")));
}

#[test]
fn primary_loss_fails_over_to_the_first_eligible_standby() {
    let s = spec("a", false);
    let st = State::initial(&s);
    // c is up but a primary (not a standby): not eligible; b is.
    let v = view(&[
        ("a", false, None, 0),
        ("b", true, Some(true), 0),
        ("c", true, Some(false), 0),
    ]);
    assert_eq!(
        decide(&s, &st, &v),
        Decision::Start {
            from: "a".into(),
            to: "b".into(),
            reason: Reason::PrimaryLost
        }
    );
    let mut manual = s.clone();
    manual.switchover.automatic = false;
    assert!(matches!(decide(&manual, &st, &v), Decision::Blocked(_)));
    let none = view(&[("a", false, None, 0), ("b", false, None, 0)]);
    assert!(matches!(decide(&s, &st, &none), Decision::Blocked(_)));
}

#[test]
fn failback_only_when_enabled_and_the_old_primary_is_an_up_to_date_standby() {
    let s = spec("a", true);
    let mut st = State::initial(&s);
    st.active_region = "b".into();
    let back = view(&[("a", true, Some(true), 0), ("b", true, Some(false), 0)]);
    assert_eq!(
        decide(&s, &st, &back),
        Decision::Start {
            from: "b".into(),
            to: "a".into(),
            reason: Reason::Failback
        }
    );
    assert_eq!(decide(&spec("a", false), &st, &back), Decision::Steady);
    // Still a primary (not rejoined as standby): no failback.
    let split = view(&[("a", true, Some(false), 0), ("b", true, Some(false), 0)]);
    assert_eq!(decide(&s, &st, &split), Decision::Steady);
}

#[test]
fn a_switchover_walks_every_step_once_and_lands_in_history() {
    let s = spec("a", false);
    let mut st = State::initial(&s);
    begin(
        &mut st,
        &s,
        "a".into(),
        "b".into(),
        Reason::Manual,
        10,
        1_000,
    );
    assert_eq!(decide(&s, &st, &BTreeMap::new()), Decision::Resume);
    let mut steps = Vec::new();
    let mut epoch = 10;
    while let Some(sw) = st.in_progress.as_mut() {
        steps.push(sw.step);
        match sw.step {
            Step::Demote => sw.writes_stopped_ms = Some(1_500),
            Step::MoveLease => epoch = 11,
            Step::Promote => sw.writes_resumed_ms = Some(3_100),
            _ => {}
        }
        complete(&mut st, epoch, 4_000, "t".into());
    }
    assert_eq!(
        steps,
        [
            Step::Validate,
            Step::Demote,
            Step::Drain,
            Step::FlipDns,
            Step::MoveLease,
            Step::Promote,
            Step::Restore,
            Step::Audit
        ]
    );
    assert_eq!(st.active_region, "b");
    assert_eq!(st.epoch, 11);
    assert_eq!(st.history[0].write_gap_ms, 1_600);
    assert_eq!(st.history[0].duration_ms, 3_000);
    assert_eq!(
        decide(&s, &st, &view(&[("b", true, Some(false), 0)])),
        Decision::Steady
    );
}

proptest! {
    /// Resuming after a crash at any step never skips a step and never goes backwards; the
    /// active region changes exactly once, at FlipDns.
    #[test]
    fn resumes_are_monotonic(crash_after in 0usize..8, repeats in 1usize..4) {
        let s = spec("a", false);
        let mut st = State::initial(&s);
        begin(&mut st, &s, "a".into(), "b".into(), Reason::PrimaryLost, 3, 0);
        let mut seen = Vec::new();
        let mut i = 0;
        while let Some(sw) = st.in_progress.clone() {
            // A crash before persisting: the same step runs again (idempotent).
            if i == crash_after {
                for _ in 0..repeats { seen.push(sw.step); }
            }
            seen.push(sw.step);
            let before = st.active_region.clone();
            complete(&mut st, 3, 10, "t".into());
            if sw.step == Step::FlipDns { prop_assert_eq!(st.active_region.as_str(), "b"); }
            else if st.in_progress.is_some() { prop_assert_eq!(st.active_region.clone(), before); }
            i += 1;
        }
        prop_assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        prop_assert_eq!(st.history.len(), 1);
    }
}
