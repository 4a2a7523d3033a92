//! The connection-manager state machines: every event at every step.

use proptest::prelude::*;
use tokio_rdma_core::{
    ActiveOpen, CmEventKind as K, ConnectAction as A, ConnectFailure as F, ConnectStep as S,
    ConnectionEvent, PassiveOpen, REJECT_CONSUMER_DEFINED,
};

#[test]
fn event_numbers_round_trip() {
    for raw in 0..20 {
        assert_eq!(K::from_raw(raw).raw(), raw);
    }
    assert_eq!(K::from_raw(4), K::ConnectRequest);
    assert_eq!(K::from_raw(15), K::TimewaitExit);
    assert_eq!(K::from_raw(16), K::Unknown(16));
}

#[test]
fn active_open_happy_path() {
    let mut m = ActiveOpen::new();
    assert_eq!(m.step(), Some(S::ResolveAddr));
    assert_eq!(m.handle(K::AddrResolved, 0), A::ResolveRoute);
    assert_eq!(m.handle(K::RouteResolved, 0), A::Connect);
    assert_eq!(m.handle(K::ConnectResponse, 0), A::Establish);
    assert_eq!(m.step(), Some(S::Connect));
    assert_eq!(m.established(), A::Done);
    assert_eq!(m.step(), None);
    assert_eq!(m.handle(K::Disconnected, 0), A::Ignore);
}

#[test]
fn active_open_failures_are_distinct() {
    let mut m = ActiveOpen::new();
    assert_eq!(
        m.handle(K::AddrError, -110),
        A::Fail(F::Unreachable {
            step: S::ResolveAddr,
            status: -110
        })
    );
    let mut m = ActiveOpen::new();
    m.handle(K::AddrResolved, 0);
    assert_eq!(
        m.handle(K::RouteError, -113),
        A::Fail(F::Unreachable {
            step: S::ResolveRoute,
            status: -113
        })
    );
    let connecting = || {
        let mut m = ActiveOpen::new();
        m.handle(K::AddrResolved, 0);
        m.handle(K::RouteResolved, 0);
        m
    };
    assert_eq!(
        connecting().handle(K::Rejected, 8),
        A::Fail(F::Refused { reason: 8 })
    );
    assert_eq!(
        connecting().handle(K::Rejected, REJECT_CONSUMER_DEFINED),
        A::Fail(F::Rejected {
            reason: REJECT_CONSUMER_DEFINED
        })
    );
    assert_eq!(
        connecting().handle(K::Unreachable, -110),
        A::Fail(F::Unreachable {
            step: S::Connect,
            status: -110
        })
    );
    assert_eq!(
        connecting().handle(K::DeviceRemoval, 0),
        A::Fail(F::DeviceRemoved)
    );
    assert_eq!(connecting().handle(K::AddrChange, 0), A::Ignore);
    // A failed resolution reported as "resolved" with an error status is a failure too.
    assert_eq!(
        ActiveOpen::new().handle(K::AddrResolved, -19),
        A::Fail(F::Unreachable {
            step: S::ResolveAddr,
            status: -19
        })
    );
}

#[test]
fn passive_open() {
    assert_eq!(PassiveOpen::new().handle(K::Established, 0), A::Done);
    assert!(matches!(
        PassiveOpen::new().handle(K::Disconnected, 0),
        A::Fail(F::Unreachable { .. })
    ));
    let mut m = PassiveOpen::new();
    assert_eq!(m.handle(K::AddrChange, 0), A::Ignore);
    assert!(!m.is_finished());
    assert!(matches!(
        m.handle(K::Rejected, 1),
        A::Fail(F::Refused { reason: 1 })
    ));
    assert!(m.is_finished());
    assert_eq!(m.handle(K::Established, 0), A::Ignore);
}

#[test]
fn connection_events() {
    assert!(ConnectionEvent::from_event(K::Disconnected, 0).ends_connection());
    assert!(ConnectionEvent::from_event(K::DeviceRemoval, 0).ends_connection());
    assert!(ConnectionEvent::from_event(K::TimewaitExit, 0).is_last());
    assert_eq!(
        ConnectionEvent::from_event(K::MulticastJoin, 3),
        ConnectionEvent::Other {
            event: K::MulticastJoin,
            status: 3
        }
    );
}

proptest! {
    /// Any sequence of events: the machines never panic, finish at most once, and once
    /// finished only ignore.
    #[test]
    fn any_event_sequence_finishes_at_most_once(events in proptest::collection::vec((0u32..18, -120i32..40), 0..12)) {
        let mut active = ActiveOpen::new();
        let mut passive = PassiveOpen::new();
        let mut active_ends = 0;
        let mut passive_ends = 0;
        for (raw, status) in events {
            let kind = K::from_raw(raw);
            let a = active.handle(kind, status);
            let a = if a == A::Establish { active.established() } else { a };
            if matches!(a, A::Done | A::Fail(_)) {
                active_ends += 1;
                prop_assert_eq!(active.step(), None);
            }
            if matches!(passive.handle(kind, status), A::Done | A::Fail(_)) {
                passive_ends += 1;
            }
        }
        prop_assert!(active_ends <= 1);
        prop_assert!(passive_ends <= 1);
    }
}
