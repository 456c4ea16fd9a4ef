//! Datapath events → the events Hubble emits for them.
//!
//! The datapath reports a denied new connection as one drop event. Cilium reports it twice: a
//! policy-verdict event (type 5, verdict DROPPED, with match type and the deny policy) and the
//! drop event; `hubble observe --type policy-verdict` and `hubble_policy_verdicts_total{action=
//! "dropped"}` rely on the first. [`VerdictEvents`] derives that verdict event in userspace
//! until the datapath emits one itself (the first DROPPED policy-verdict event from the kernel
//! turns the derivation off, so no event is ever reported twice).
//!
//! It also turns the policy-verdict event of a connection in a direction the policy does not
//! enforce (allowed with no rule and no match) into the trace event Cilium emits there: Hubble
//! has no verdict events for unenforced directions.

use catalyst_policy::datapath::{
    DROP_POLICY_DENIED, DROP_POLICY_DENY, EV_F_NEW, EV_F_REEVALUATED, EV_F_REPLY, EVENT_DROP,
    EVENT_POLICY_VERDICT, EVENT_TRACE, FlowEvent, MATCH_NONE, VERDICT_DROPPED, VERDICT_FORWARDED,
};

/// Per-pipeline state of the derivation.
#[derive(Debug, Default)]
pub struct VerdictEvents {
    kernel_emits_denied: bool,
}

impl VerdictEvents {
    /// The events to record for `ev`, in order: an optional derived policy-verdict event, then
    /// the (possibly reclassified) event itself.
    pub fn expand(&mut self, mut ev: FlowEvent) -> (Option<FlowEvent>, FlowEvent) {
        if ev.kind == EVENT_POLICY_VERDICT && ev.verdict == VERDICT_DROPPED {
            self.kernel_emits_denied = true;
        }
        if ev.kind == EVENT_POLICY_VERDICT
            && ev.verdict == VERDICT_FORWARDED
            && ev.rule_id == 0
            && ev.match_type == MATCH_NONE
        {
            ev.kind = EVENT_TRACE;
            return (None, ev);
        }
        let denied_by_policy = matches!(ev.drop_reason, DROP_POLICY_DENIED | DROP_POLICY_DENY);
        let decision = ev.flags & (EV_F_NEW | EV_F_REEVALUATED) != 0;
        let derive = !self.kernel_emits_denied
            && ev.kind == EVENT_DROP
            && ev.verdict == VERDICT_DROPPED
            && denied_by_policy
            && decision
            && ev.flags & EV_F_REPLY == 0;
        let verdict = derive.then_some(FlowEvent {
            kind: EVENT_POLICY_VERDICT,
            ..ev
        });
        (verdict, ev)
    }
}

#[cfg(test)]
mod tests {
    use catalyst_policy::datapath::{DIR_INGRESS, MATCH_L3_L4, PROTO_TCP, VERDICT_AUDIT};

    use super::*;

    fn denied(reason: u8, flags: u8) -> FlowEvent {
        FlowEvent {
            kind: EVENT_DROP,
            verdict: VERDICT_DROPPED,
            drop_reason: reason,
            direction: DIR_INGRESS,
            protocol: PROTO_TCP,
            flags,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn denied_new_connection_gets_a_dropped_policy_verdict_first() {
        let mut v = VerdictEvents::default();
        for reason in [DROP_POLICY_DENIED, DROP_POLICY_DENY] {
            let (pv, drop) = v.expand(denied(reason, EV_F_NEW));
            let pv = pv.expect("a verdict event");
            assert_eq!(pv.kind, EVENT_POLICY_VERDICT);
            assert_eq!(pv.verdict, VERDICT_DROPPED);
            assert_eq!(pv.drop_reason, reason);
            assert_eq!(drop.kind, EVENT_DROP);
        }
    }

    #[test]
    fn no_verdict_for_replies_repeats_or_other_drops() {
        let mut v = VerdictEvents::default();
        assert!(v.expand(denied(DROP_POLICY_DENIED, 0)).0.is_none());
        assert!(
            v.expand(denied(DROP_POLICY_DENIED, EV_F_NEW | EV_F_REPLY))
                .0
                .is_none()
        );
        assert!(v.expand(denied(134, EV_F_NEW)).0.is_none());
        assert!(
            v.expand(denied(DROP_POLICY_DENIED, EV_F_REEVALUATED))
                .0
                .is_some()
        );
    }

    #[test]
    fn kernel_verdicts_turn_derivation_off() {
        let mut v = VerdictEvents::default();
        let kernel = FlowEvent {
            kind: EVENT_POLICY_VERDICT,
            ..denied(DROP_POLICY_DENIED, EV_F_NEW)
        };
        let (none, same) = v.expand(kernel);
        assert!(none.is_none());
        assert_eq!(same.kind, EVENT_POLICY_VERDICT);
        assert!(v.expand(denied(DROP_POLICY_DENIED, EV_F_NEW)).0.is_none());
    }

    #[test]
    fn unenforced_direction_is_a_trace_not_a_verdict() {
        let mut v = VerdictEvents::default();
        let allowed_by_default = FlowEvent {
            kind: EVENT_POLICY_VERDICT,
            verdict: VERDICT_FORWARDED,
            flags: EV_F_NEW,
            ..FlowEvent::default()
        };
        assert_eq!(v.expand(allowed_by_default).1.kind, EVENT_TRACE);
        let allowed_by_rule = FlowEvent {
            rule_id: 3,
            match_type: MATCH_L3_L4,
            ..allowed_by_default
        };
        assert_eq!(v.expand(allowed_by_rule).1.kind, EVENT_POLICY_VERDICT);
        let audited = FlowEvent {
            verdict: VERDICT_AUDIT,
            ..allowed_by_default
        };
        assert_eq!(v.expand(audited).1.kind, EVENT_POLICY_VERDICT);
    }
}
