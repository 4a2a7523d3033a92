//! Property tests: random event scripts against the fake CQ harness. Invariants checked after
//! every step and at the end (see `common`): every slot eventually free, no resource dropped
//! before its completion was handed to the dispatcher, owners get exactly the NIC's first
//! completion for their wr_id, waiting owners are woken, counters consistent.

mod common;

use common::{run, Step};
use proptest::prelude::*;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Post),
        2 => Just(Step::PostRouted),
        1 => any::<u8>().prop_map(Step::PostFails),
        4 => any::<usize>().prop_map(Step::NicComplete),
        1 => Just(Step::NicFlushAll),
        2 => any::<usize>().prop_map(Step::Duplicate),
        1 => any::<u64>().prop_map(Step::Garbage),
        1 => any::<usize>().prop_map(Step::Reorder),
        3 => (0usize..8).prop_map(Step::PollCq),
        3 => any::<usize>().prop_map(Step::PollOp),
        1 => any::<usize>().prop_map(Step::DropOp),
        1 => any::<usize>().prop_map(Step::AbandonOp),
        2 => Just(Step::Recv),
        1 => Just(Step::FailAll),
    ]
}

proptest! {
    // At least 512 cases; PROPTEST_CASES can ask for more.
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases.max(512), ..ProptestConfig::default() })]

    #[test]
    fn random_scripts_keep_invariants(
        capacity in 1usize..6,
        script in proptest::collection::vec(step(), 0..120),
    ) {
        run(capacity, &script);
    }
}
