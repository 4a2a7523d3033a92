//! How a completion channel's driver and the futures on its CQs poll.

/// Empty polls in a row between two cooperative yields while the driver spins, and the
/// default number of inline polls of an awaiting future.
pub(crate) const TIGHT_POLLS: u32 = 32;

/// On a wake-up from parking, the driver polls its parked CQs before reading the channel's
/// events when there are at most this many (a connection's own channel has one).
pub(crate) const WAKE_POLLS: u32 = 4;

/// Max [`DriverConfig::poll_batch`].
pub(crate) const MAX_BATCH: usize = 64;

/// Tuning of a completion channel's driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// How many polls the driver spends on a CQ that went quiet before it arms the CQ and
    /// parks it, counted in polls of the channel (a round polls each active CQ once; the
    /// driver yields to the runtime every 32 empty rounds): with one CQ active, this many
    /// empty rounds; with `n`, this many divided by `n`, so a moment of many busy connections
    /// does not leave every one of them polled for long. Each CQ counts its own: a CQ that
    /// went quiet is parked even while other CQs of the channel stay busy. `0` parks
    /// at once (event mode: lowest CPU, highest latency; a waiting future then also
    /// waits on the channel fd itself, so its task is woken first). Bounded by count, never by
    /// clock. It is also the budget of a future that spins on its own CQ while that CQ is the
    /// driver's only active one (see the crate docs): it polls at most this many times per
    /// wait, yielding to the runtime between turns of `inline_polls`, then waits for the
    /// driver.
    pub spin_iterations: u32,
    /// How many work completions one `ibv_poll_cq` call fetches (1..=64).
    pub poll_batch: usize,
    /// Acknowledge CQ events in batches of this many (`ibv_ack_cq_events` takes a mutex).
    pub ack_batch: u32,
    /// How many times a future or receive stream whose result is not there yet polls the CQ
    /// itself before it returns `Pending` (at least once while the driver has at most one CQ
    /// active). The default, 32, is the driver's own number of polls between two yields: a
    /// completion that lands within that many polls reaches the awaiting task without the
    /// wake-up hop through the driver task, and a task holds its thread no longer than the
    /// driver does. 1 leaves nearly all waiting to the driver. A latency-critical task that
    /// owns its thread (a ping-pong, a storage target's I/O loop) can set thousands: it then
    /// busy-polls inline like a raw verbs loop, for at most that many polls per `poll`
    /// before it yields to the runtime. Bounded by count, never by clock. The budget adapts
    /// per CQ: it halves (down to 1) each time a future spends it all and has to wait, and
    /// doubles back (up to this value) each time inline polls find a completion, so tasks
    /// whose completions come later than the polls last (many flows on one thread) stop
    /// spending polls that the driver's spin makes anyway. While the driver has more than one
    /// CQ active, a future does not poll at all, whatever this says: the driver's rounds
    /// serve every busy CQ in turn, where a future that kept finding its completions itself
    /// (even with one poll, when the reply is back before its send returns) would hold its
    /// thread for one flow. The count is the channel's: connections on channels of their own
    /// that share a thread are not covered by this rule.
    pub inline_polls: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            spin_iterations: 16384,
            poll_batch: 32,
            ack_batch: 64,
            inline_polls: TIGHT_POLLS,
        }
    }
}
