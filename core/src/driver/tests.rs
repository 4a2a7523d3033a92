use super::*;

use DriverStep::*;

fn cfg(spin_polls: u32, tight_polls: u32, ack_batch: u32) -> DriverPolicyConfig {
    DriverPolicyConfig {
        spin_polls,
        tight_polls,
        ack_batch,
        wake_polls: 0,
    }
}

/// Runs the policy against in-memory CQs (`cqs[i]` completions waiting) until it parks;
/// returns the steps, `Park` included.
fn run_to_park(p: &mut DriverPolicy, cqs: &mut [usize]) -> Vec<DriverStep<usize>> {
    let mut steps = Vec::new();
    loop {
        let s = p.next_step();
        steps.push(s);
        match s {
            Poll(cq) => p.on_polled(cq, std::mem::take(&mut cqs[cq])),
            Arm(cq) => p.on_polled_after_arm(cq, std::mem::take(&mut cqs[cq])),
            Park => return steps,
            DrainEvents | Ack { .. } | Yield => {}
        }
        assert!(steps.len() < 10_000, "never parks");
    }
}

fn wake(p: &mut DriverPolicy, cqs: &[usize]) {
    p.on_readable();
    assert_eq!(p.next_step(), DrainEvents);
    for &cq in cqs {
        assert_eq!(p.on_event(cq), EventOutcome::Counted);
    }
}

#[test]
fn nothing_registered_parks() {
    let mut p: DriverPolicy = DriverPolicy::new(DriverPolicyConfig::default());
    assert_eq!(p.next_step(), Park);
    assert_eq!(p.next_step(), Park);
}

#[test]
fn a_spurious_event_spins_the_budget_then_arms_polls_and_parks_without_a_yield() {
    let mut p = DriverPolicy::new(cfg(5, 2, 64));
    p.add_cq(0);
    wake(&mut p, &[0]);
    let steps = run_to_park(&mut p, &mut [0]);
    assert_eq!(
        steps,
        [
            Poll(0),
            Poll(0),
            Yield,
            Poll(0),
            Poll(0),
            Yield,
            Poll(0),
            Arm(0),
            Park
        ]
    );
    assert!(p.active().is_empty());
}

#[test]
fn zero_spin_arms_after_one_empty_round() {
    let mut p = DriverPolicy::new(cfg(0, 32, 64));
    p.add_cq(3);
    wake(&mut p, &[3]);
    let mut cqs = [0; 4];
    assert_eq!(run_to_park(&mut p, &mut cqs), [Poll(3), Arm(3), Park]);
}

#[test]
fn a_completion_resets_the_spin_and_yields() {
    let mut p = DriverPolicy::new(cfg(3, 32, 64));
    p.add_cq(0);
    wake(&mut p, &[0]);
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 4);
    assert_eq!(p.next_step(), Yield);
    // The budget starts over: three empty rounds, then the arm.
    let steps = run_to_park(&mut p, &mut [0]);
    assert_eq!(steps, [Poll(0), Poll(0), Poll(0), Arm(0), Park]);
}

#[test]
fn activity_seen_elsewhere_restarts_the_spin_without_a_yield() {
    let mut p = DriverPolicy::new(cfg(3, 32, 64));
    p.add_cq(0);
    wake(&mut p, &[0]);
    for _ in 0..2 {
        assert_eq!(p.next_step(), Poll(0));
        p.on_polled(0, 0);
    }
    // The third look found the CQ empty, but futures had taken completions from it since the
    // second. Without the report the third empty poll ends the budget: [Arm(0), Park].
    assert_eq!(p.next_step(), Poll(0));
    p.on_activity(0);
    p.on_polled(0, 0);
    let steps = run_to_park(&mut p, &mut [0]);
    assert_eq!(steps, [Poll(0), Poll(0), Arm(0), Park]);
}

#[test]
fn a_completion_found_by_the_poll_after_arm_keeps_the_cq_active() {
    let mut p = DriverPolicy::new(cfg(1, 32, 64));
    p.add_cq(0);
    p.add_cq(1);
    wake(&mut p, &[0, 1]);
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), Poll(1));
    p.on_polled(1, 0);
    assert_eq!(p.next_step(), Arm(0));
    p.on_polled_after_arm(0, 1); // landed between the last poll and the arm
    assert_eq!(p.next_step(), Arm(1));
    p.on_polled_after_arm(1, 0);
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.active(), [0]);
    assert_eq!(p.next_step(), Poll(0));
}

#[test]
fn an_event_during_the_round_joins_it_but_is_not_armed_unpolled() {
    let mut p = DriverPolicy::new(cfg(1, 32, 64));
    p.add_cq(0);
    p.add_cq(1);
    wake(&mut p, &[0]);
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    // Spin budget spent: arming starts with CQ 0; meanwhile CQ 1 gets an event.
    assert_eq!(p.next_step(), Arm(0));
    wake(&mut p, &[1]);
    assert_eq!(p.next_step(), Arm(0));
    p.on_polled_after_arm(0, 0);
    // CQ 1 was never polled empty: it is not armed, it is polled.
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.next_step(), Poll(1));
}

#[test]
fn acks_are_batched_and_removal_returns_the_rest() {
    let mut p = DriverPolicy::new(cfg(0, 32, 3));
    p.add_cq(0);
    let mut acked = 0;
    for _ in 0..7 {
        wake(&mut p, &[0]);
        for s in run_to_park(&mut p, &mut [0]) {
            if let Ack { cq: 0, n } = s {
                assert_eq!(n, 3);
                acked += n;
            }
        }
    }
    assert_eq!(acked, 6);
    assert_eq!(p.unacked(0), Some(1));
    assert_eq!(p.on_cq_removed(0), 1);
    assert_eq!(p.unacked(0), None);
    assert_eq!(p.on_cq_removed(0), 0);
}

#[test]
fn many_events_in_one_drain_are_acked_together_first() {
    let mut p = DriverPolicy::new(cfg(0, 32, 4));
    p.add_cq(0);
    wake(&mut p, &[0; 9]);
    assert_eq!(p.next_step(), Ack { cq: 0, n: 9 });
    assert_eq!(p.next_step(), Poll(0));
}

#[test]
fn an_event_for_an_unregistered_cq_is_acked_at_once() {
    let mut p = DriverPolicy::new(DriverPolicyConfig::default());
    p.add_cq(0);
    assert_eq!(p.on_cq_removed(0), 0);
    assert_eq!(p.on_event(0), EventOutcome::AckNow);
    assert_eq!(p.next_step(), Park);
}

#[test]
fn removing_a_cq_mid_round_keeps_the_round_consistent() {
    let mut p = DriverPolicy::new(cfg(100, 32, 2));
    for cq in 0..3 {
        p.add_cq(cq);
    }
    wake(&mut p, &[0, 1, 2, 1]);
    assert_eq!(p.next_step(), Ack { cq: 1, n: 2 });
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), Poll(1));
    p.on_polled(1, 0);
    assert_eq!(p.on_cq_removed(0), 1);
    assert_eq!(p.next_step(), Poll(2));
    p.on_polled(2, 1);
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.active(), [1, 2]);
    assert_eq!(p.on_cq_removed(1), 0);
    assert_eq!(p.on_cq_removed(2), 1);
    assert_eq!(p.next_step(), Park);
}

#[test]
fn reports_that_answer_no_step_are_ignored() {
    let mut p = DriverPolicy::new(cfg(2, 32, 64));
    p.add_cq(0);
    p.on_polled(0, 5);
    p.on_polled_after_arm(0, 0);
    assert_eq!(p.next_step(), Park);
    wake(&mut p, &[0]);
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(7, 1); // not the CQ asked for
    assert_eq!(p.next_step(), Poll(0));
}

fn waking(wake_polls: u32) -> DriverPolicy {
    DriverPolicy::new(DriverPolicyConfig {
        wake_polls,
        ..cfg(0, 32, 64)
    })
}

#[test]
fn a_wake_up_polls_the_parked_cqs_and_yields_before_reading_the_events() {
    let mut p = waking(4);
    p.add_cq(0);
    p.add_cq(1);
    assert_eq!(p.next_step(), Park);
    p.on_woken();
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), Poll(1));
    p.on_polled(1, 1);
    // The woken consumer runs before `ibv_get_cq_event` is read.
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.next_step(), DrainEvents);
    assert_eq!(p.on_event(1), EventOutcome::Counted);
    // The CQ with the event goes through the usual poll-arm-poll and parks again.
    assert_eq!(run_to_park(&mut p, &mut [0, 0]), [Poll(1), Arm(1), Park]);
    p.on_woken();
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), Poll(1));
}

#[test]
fn a_wake_up_that_finds_nothing_reads_the_events_at_once() {
    let mut p = waking(4);
    p.add_cq(0);
    assert_eq!(p.next_step(), Park);
    p.on_woken();
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.next_step(), DrainEvents);
}

#[test]
fn with_more_parked_cqs_than_wake_polls_the_events_are_read_first() {
    let mut p = waking(2);
    for cq in 0..3 {
        p.add_cq(cq);
    }
    assert_eq!(p.next_step(), Park);
    p.on_woken();
    assert_eq!(p.next_step(), DrainEvents);
    let mut p = waking(0);
    p.add_cq(0);
    p.on_woken();
    assert_eq!(p.next_step(), DrainEvents);
}

#[test]
fn only_parked_cqs_are_polled_on_a_wake_up_and_removal_keeps_the_place() {
    let mut p = waking(4);
    for cq in 0..3 {
        p.add_cq(cq);
    }
    // CQ 1 is active (an event, a completion): it is not parked.
    wake(&mut p, &[1]);
    assert_eq!(p.next_step(), Poll(1));
    p.on_polled(1, 1);
    assert_eq!(p.next_step(), Yield);
    // A wake-up while a CQ is active is a plain `on_readable`.
    p.on_woken();
    assert_eq!(p.next_step(), DrainEvents);
    assert_eq!(run_to_park(&mut p, &mut [0; 3]), [Poll(1), Arm(1), Park]);
    // Parked now: 0, 2, 1. Removing 0 after its poll keeps the wake-up's place.
    p.on_woken();
    assert_eq!(p.next_step(), Poll(0));
    p.on_polled(0, 0);
    assert_eq!(p.on_cq_removed(0), 0);
    assert_eq!(p.next_step(), Poll(2));
    p.on_polled(2, 0);
    assert_eq!(p.next_step(), Poll(1));
    p.on_polled(1, 0);
    assert_eq!(p.next_step(), DrainEvents);
}

/// A CQ that went quiet is parked after its own spin budget while another keeps completing.
/// With one budget for the channel, every completion of the busy CQ restarted it, and the
/// quiet CQ stayed active (polled every round, and counted by the futures' polling rules as a
/// second busy CQ) for as long as the other was busy.
#[test]
fn a_busy_cq_does_not_keep_a_quiet_one_active() {
    let mut p = DriverPolicy::new(cfg(8, 32, 64));
    p.add_cq(0);
    p.add_cq(1);
    wake(&mut p, &[0, 1]);
    let mut steps = Vec::new();
    for _ in 0..100 {
        let s = p.next_step();
        steps.push(s);
        match s {
            Poll(0) => p.on_polled(0, 1),
            Poll(1) => p.on_polled(1, 0),
            Arm(cq) => p.on_polled_after_arm(cq, 0),
            Yield => {}
            s => panic!("unexpected step {s:?}"),
        }
        if p.active() == [0] {
            break;
        }
    }
    assert_eq!(p.active(), [0], "steps: {steps:?}");
    // Eight polls of the channel are four rounds of two, each ending with a yield (CQ 0
    // found completions), the fourth with the arm of CQ 1.
    let round = [Poll(0), Poll(1), Yield];
    let expected: Vec<_> = round
        .iter()
        .chain(&round)
        .chain(&round)
        .chain(&[Poll(0), Poll(1), Arm(1)])
        .copied()
        .collect();
    assert_eq!(steps, expected);
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.next_step(), Poll(0));
}

/// Completions futures took from one CQ restart that CQ's budget only.
#[test]
fn activity_on_one_cq_does_not_restart_the_budget_of_another() {
    let mut p = DriverPolicy::new(cfg(4, 32, 64));
    p.add_cq(0);
    p.add_cq(1);
    wake(&mut p, &[0, 1]);
    for _ in 0..2 {
        assert_eq!(p.next_step(), Poll(0));
        p.on_activity(0);
        p.on_polled(0, 0);
        assert_eq!(p.next_step(), Poll(1));
        p.on_polled(1, 0);
    }
    assert_eq!(p.next_step(), Arm(1));
    p.on_polled_after_arm(1, 0);
    assert_eq!(p.next_step(), Yield);
    assert_eq!(p.active(), [0]);
}

/// The spin budget counts the channel's polls: `n` quiet CQs are parked after
/// `spin_polls / n` rounds, so going quiet costs the same polls however many were active (it
/// was `spin_polls` rounds of `n` polls each: 512 connections that each had a message kept a
/// round of 512 polls going for 16384 rounds).
#[test]
fn quiet_cqs_cost_the_spin_budget_in_polls_however_many_are_active() {
    for n in [1usize, 2, 4, 16] {
        let mut p = DriverPolicy::new(cfg(64, 1000, 64));
        let keys: Vec<usize> = (0..n).collect();
        for &k in &keys {
            p.add_cq(k);
        }
        wake(&mut p, &keys);
        let mut cqs = vec![0; n];
        let steps = run_to_park(&mut p, &mut cqs);
        let polls = steps.iter().filter(|s| matches!(s, Poll(_))).count();
        let arms = steps.iter().filter(|s| matches!(s, Arm(_))).count();
        assert_eq!((polls, arms), (64, n), "{n} CQs: {steps:?}");
    }
}
