//! What the policy hands out ([`DriverStep`]), what it answers to an event
//! ([`EventOutcome`]), and how it is tuned ([`DriverPolicyConfig`]).

#[cfg(doc)]
use super::DriverPolicy;

/// Tuning of a [`DriverPolicy`]. Counts, never clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverPolicyConfig {
    /// The spin budget of a CQ that went quiet: polls of the channel (of every active CQ)
    /// since its last completion, before it is armed and parked. With `n` CQs active a round
    /// is `n` polls, so a quiet CQ is parked after `spin_polls / n` empty rounds: going quiet
    /// costs about `spin_polls` polls however many CQs are active, and a round stays short
    /// when many connections each had a message a moment ago. Each CQ counts its own, so
    /// one that went quiet is parked even while others keep completing. `0` arms a CQ after
    /// one empty poll.
    pub spin_polls: u32,
    /// Empty rounds polled back to back between two [`DriverStep::Yield`]s (at least 1): the
    /// runtime's per-yield cost is paid once per this many empty rounds.
    pub tight_polls: u32,
    /// Acknowledge a CQ's events once this many are unacknowledged (at least 1).
    pub ack_batch: u32,
    /// On a wake-up from parking, poll the parked CQs before reading the events when there
    /// are at most this many (`0`: read the events first). The events say which CQs to poll,
    /// so with many parked CQs reading them is cheaper than polling every one.
    pub wake_polls: u32,
}

impl Default for DriverPolicyConfig {
    fn default() -> Self {
        Self {
            spin_polls: 16384,
            tight_polls: 32,
            ack_batch: 64,
            wake_polls: 4,
        }
    }
}

/// What the executor does next (see [`DriverPolicy::next_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverStep<K> {
    /// `ibv_ack_cq_events(cq, n)`.
    Ack {
        /// The CQ whose events are acknowledged.
        cq: K,
        /// How many.
        n: u32,
    },
    /// The channel fd was seen readable: read every pending CQ event (`ibv_get_cq_event`
    /// until `EAGAIN`, clearing the fd's readiness only then), reporting each with
    /// [`DriverPolicy::on_event`].
    DrainEvents,
    /// Poll this CQ once (one batch) and report it with [`DriverPolicy::on_polled`].
    Poll(K),
    /// Arm this CQ (`ibv_req_notify_cq`), then poll it once and report that poll with
    /// [`DriverPolicy::on_polled_after_arm`].
    Arm(K),
    /// Yield to the runtime once. Afterwards, if the fd is readable (a cheap, non-blocking
    /// check), report it with [`DriverPolicy::on_readable`].
    Yield,
    /// Nothing is active (every CQ is armed and was found empty after its arm): wait until
    /// the channel fd is readable, then call [`DriverPolicy::on_woken`]. Parking gives the
    /// runtime control, so no [`DriverStep::Yield`] precedes it.
    Park,
}

/// What [`DriverPolicy::on_event`] made of an event.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Counted for a later [`DriverStep::Ack`]; the CQ is active.
    Counted,
    /// The CQ is not registered (it is being removed): acknowledge this one event right away,
    /// before the CQ is destroyed.
    AckNow,
}
