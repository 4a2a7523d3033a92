//! perftest's latency and bandwidth figures on hand-computed examples, edge cases and
//! properties. The mock clock counts one cycle per nanosecond, so 1000 cycles = 1 usec.

use proptest::prelude::*;
use tokio_rdma_bench::clock::CycleClock;
use tokio_rdma_bench::stats::{
    cpu_usec_per_op, ops_per_sec, peak_cycles_per_message, Bandwidth, Latency,
};

fn clock() -> CycleClock {
    CycleClock::mock().0
}

/// Stamps whose consecutive differences are `deltas` (cycles), starting at 1_000_000.
fn stamps_from(deltas: &[u64]) -> Vec<u64> {
    let mut stamps = vec![1_000_000u64];
    for d in deltas {
        stamps.push(stamps.last().unwrap() + d);
    }
    stamps
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

#[test]
fn odd_count_drops_the_two_largest_and_takes_the_middle() {
    // Samples (usec) 5 1 3 2 4 100 50 -> sorted 1 2 3 4 5 | 50 100; m = 5 kept.
    let stamps = stamps_from(&[5000, 1000, 3000, 2000, 4000, 100_000, 50_000]);
    let l = Latency::from_stamps(&stamps, &clock(), false).unwrap();
    assert_eq!(l.iters, 8);
    assert!(close(l.t_min, 1.0));
    assert!(
        close(l.t_max, 50.0),
        "t_max is sorted[m], the second largest: {}",
        l.t_max
    );
    assert!(close(l.t_typical, 3.0));
    assert!(
        close(l.t_avg, 3.0),
        "the mean ignores the dropped 50 and 100"
    );
    assert!(close(l.t_stdev, 2f64.sqrt()));
    assert!(close(l.t_stdev_exact, 2f64.sqrt()));
    // ceil(0.99 * 5) = 5 and ceil(0.999 * 5) = 5: both read sorted[5] = 50.
    assert!(close(l.percentile_99, 50.0));
    assert!(close(l.percentile_99_9, 50.0));
    // ceil(0.5 * 5) = 3 -> 4 usec (the median is 3).
    assert!(close(l.p50, 4.0));
}

#[test]
fn even_count_median_is_the_integer_mean_of_the_middle_pair_halved_for_rtt() {
    // Cycles sorted 1000 1001 2000 2003 | 9000 9999; m = 4.
    let stamps = stamps_from(&[2003, 1000, 9999, 2000, 1001, 9000]);
    let l = Latency::from_stamps(&stamps, &clock(), true).unwrap();
    // (2000 + 1001) / 2 = 1500 in integer cycles, halved: 750 ns.
    assert!(close(l.t_typical, 0.75), "{}", l.t_typical);
    assert!(close(l.t_min, 0.5));
    assert!(close(l.t_max, 4.5));
    assert!(close(l.t_avg, 6004.0 / 4.0 / 2.0 / 1000.0));
    assert!(close(l.percentile_99, 4.5)); // ceil(3.96) = 4
    assert!(close(l.percentile_99_9, 4.5));
    assert!(close(l.p50, 1.0)); // ceil(2.0) = 2 -> 2000 cycles halved
                                // Every deviation is under a microsecond: perftest's int truncation makes them all 0.
    assert_eq!(l.t_stdev, 0.0);
    let kept = [0.5, 0.5005, 1.0, 1.0015];
    let var = kept.iter().map(|x| (x - l.t_avg).powi(2)).sum::<f64>() / 4.0;
    assert!(close(l.t_stdev_exact, var.sqrt()));
}

#[test]
fn stdev_truncates_each_deviation_to_whole_microseconds_like_perftest() {
    // Kept 1 1 4.5 6 (avg 3.125), dropped 100 200.
    let stamps = stamps_from(&[1000, 6000, 200_000, 1000, 4500, 100_000]);
    let l = Latency::from_stamps(&stamps, &clock(), false).unwrap();
    assert!(close(l.t_avg, 3.125));
    // Deviations 2.125 2.125 -1.375 -2.875 -> int 2 2 -1 -2 -> (4 + 4 + 1 + 4) / 4.
    assert!(close(l.t_stdev, (13.0f64 / 4.0).sqrt()), "{}", l.t_stdev);
    assert!(close(l.t_stdev_exact, (19.1875f64 / 4.0).sqrt()));
}

#[test]
fn default_thousand_iterations_like_ib_send_lat() {
    // 1000 stamps -> 999 samples of 1..=999 usec (shuffled); m = 997.
    let mut deltas: Vec<u64> = (1..=999).map(|u| u * 1000).collect();
    deltas.reverse();
    deltas.swap(3, 700);
    let l = Latency::from_stamps(&stamps_from(&deltas), &clock(), false).unwrap();
    assert_eq!(l.iters, 1000);
    assert!(close(l.t_min, 1.0));
    assert!(close(l.t_max, 998.0));
    assert!(close(l.t_typical, 499.0)); // sorted[498]
    assert!(close(l.t_avg, 499.0)); // mean of 1..=997
    assert!(close(l.percentile_99, 989.0)); // sorted[ceil(987.03)] = sorted[988]
    assert!(close(l.percentile_99_9, 998.0)); // sorted[ceil(996.003)] = sorted[997]
    assert!(close(l.p50, 500.0)); // sorted[ceil(498.5)] = sorted[499]
}

#[test]
fn fewer_than_three_samples_is_none_not_a_panic() {
    for n in 0..4 {
        let stamps: Vec<u64> = (0..n).map(|i| i * 1000).collect();
        assert!(
            Latency::from_stamps(&stamps, &clock(), true).is_none(),
            "{n} stamps"
        );
    }
    // Three samples: one kept, the figures read sorted[0] and sorted[1].
    let l = Latency::from_stamps(&stamps_from(&[3000, 1000, 2000]), &clock(), false).unwrap();
    assert!(close(l.t_min, 1.0) && close(l.t_typical, 1.0) && close(l.t_avg, 1.0));
    assert!(close(l.t_max, 2.0) && close(l.percentile_99, 2.0) && close(l.p50, 2.0));
    assert_eq!(l.t_stdev, 0.0);
}

#[test]
fn zero_duration_run_gives_zeros_not_nan() {
    let l = Latency::from_stamps(&[7; 10], &clock(), true).unwrap();
    for x in [
        l.t_min,
        l.t_max,
        l.t_typical,
        l.t_avg,
        l.t_stdev,
        l.t_stdev_exact,
    ] {
        assert_eq!(x, 0.0);
    }
    assert_eq!(l.percentile_99, 0.0);
    assert!(Bandwidth::from_run(64, &[5, 5, 5], &[5, 5, 5], &clock()).is_none());
    assert_eq!(ops_per_sec(10, std::time::Duration::ZERO), 0.0);
    assert_eq!(cpu_usec_per_op(std::time::Duration::from_millis(1), 0), 0.0);
    assert!(close(
        cpu_usec_per_op(std::time::Duration::from_millis(3), 1000),
        3.0
    ));
}

#[test]
fn a_stamp_going_backwards_is_a_zero_sample() {
    let samples = Latency::samples_usec(&[10_000, 12_000, 11_000, 15_000], &clock(), true);
    assert_eq!(samples, vec![1.0, 0.0, 2.0]);
}

#[test]
fn samples_keep_order_and_every_sample() {
    let stamps = stamps_from(&[5000, 1000, 100_000]);
    assert_eq!(
        Latency::samples_usec(&stamps, &clock(), false),
        vec![5.0, 1.0, 100.0]
    );
    assert_eq!(
        Latency::samples_usec(&stamps, &clock(), true),
        vec![2.5, 0.5, 50.0]
    );
    assert!(Latency::samples_usec(&[1], &clock(), false).is_empty());
}

#[test]
fn bandwidth_average_rate_and_peak_like_print_report_bw() {
    const MIB: f64 = 1_048_576.0;
    let post = [0, 1000, 2000, 3000];
    let completion = [5000, 6000, 7000, 11_000];
    let b = Bandwidth::from_run(1 << 20, &post, &completion, &clock()).unwrap();
    // T = 11000 ns from the first post to the last completion.
    assert!(close(b.bw_average, 4.0 / 11e-6));
    assert!(close(b.msg_rate, 4.0 / 11e-6 / 1e6));
    // Best window: messages 0..=2, 7000 / 3 = 2333 whole cycles.
    assert_eq!(peak_cycles_per_message(&post, &completion, 1), Some(2333));
    assert!(close(b.bw_peak, (1 << 20) as f64 / 2333e-9 / MIB));
}

#[test]
fn bandwidth_with_cq_moderation_reads_only_signalled_completions() {
    // cq_mod 2: only completion[1] and completion[3] are stamped; the others are garbage.
    let post = [0, 1000, 2000, 3000];
    let completion = [0, 6000, 0, 11_000];
    // Windows ending at 1 or 3: 3000, 5000, 2750, 3333, 4500, 8000.
    assert_eq!(peak_cycles_per_message(&post, &completion, 2), Some(2750));
    let b = Bandwidth::from_run_moderated(4096, &post, &completion, 2, &clock()).unwrap();
    assert!(close(b.bw_peak, 4096.0 / 2750e-9 / 1_048_576.0));
}

#[test]
fn bandwidth_rejects_empty_and_mismatched_runs() {
    assert!(Bandwidth::from_run(8, &[], &[], &clock()).is_none());
    assert!(Bandwidth::from_run(8, &[1, 2], &[3], &clock()).is_none());
    assert_eq!(peak_cycles_per_message(&[], &[], 1), None);
    // A completion stamped in the same cycle as its post: a window of 0, counted as 1 cycle.
    assert_eq!(peak_cycles_per_message(&[0, 10], &[10, 10], 1), Some(0));
    let b = Bandwidth::from_run(1000, &[0, 10], &[10, 10], &clock()).unwrap();
    assert!(close(b.bw_peak, 1000.0 / 1e-9 / 1_048_576.0));
}

/// perftest's double loop over every `(i, j)` pair, as the reference.
fn peak_brute_force(post: &[u64], completion: &[u64], cq_mod: usize) -> u64 {
    let n = post.len();
    let mut best = u64::MAX;
    for (i, &p) in post.iter().enumerate() {
        for (j, &c) in completion.iter().enumerate().skip(i) {
            if (j + 1) % cq_mod == 0 || j == n - 1 {
                let window = c.saturating_sub(p) / (j - i + 1) as u64;
                best = best.min(window);
            }
        }
    }
    best
}

/// Posts at increasing stamps, each completing some time after its post and after the
/// previous completion (the CQ completes in order).
fn run_strategy() -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
    prop::collection::vec((0u64..5_000, 1u64..20_000), 1..60).prop_map(|steps| {
        let (mut post, mut completion) = (Vec::new(), Vec::new());
        let (mut p, mut c) = (1u64 << 40, 0u64);
        for (gap, service) in steps {
            p += gap;
            c = c.max(p + service);
            post.push(p);
            completion.push(c);
        }
        (post, completion)
    })
}

proptest! {
    #[test]
    fn peak_search_matches_perftests_double_loop(
        (post, completion) in run_strategy(),
        cq_mod in 1usize..6,
    ) {
        prop_assert_eq!(
            peak_cycles_per_message(&post, &completion, cq_mod),
            Some(peak_brute_force(&post, &completion, cq_mod))
        );
    }

    #[test]
    fn latency_depends_only_on_the_samples_not_their_order(
        deltas in prop::collection::vec(0u64..1_000_000, 3..300),
        rotate in 0usize..300,
    ) {
        let a = Latency::from_stamps(&stamps_from(&deltas), &clock(), true).unwrap();
        let mut shuffled = deltas.clone();
        let k = rotate % shuffled.len();
        shuffled.rotate_left(k);
        shuffled.reverse();
        let b = Latency::from_stamps(&stamps_from(&shuffled), &clock(), true).unwrap();
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn latency_figures_are_ordered(deltas in prop::collection::vec(0u64..10_000_000, 3..500)) {
        let l = Latency::from_stamps(&stamps_from(&deltas), &clock(), false).unwrap();
        prop_assert!(l.t_min <= l.t_typical && l.t_typical <= l.t_max);
        prop_assert!(l.t_min <= l.p50 && l.p50 <= l.percentile_99);
        prop_assert!(l.percentile_99 <= l.percentile_99_9 && l.percentile_99_9 <= l.t_max);
        prop_assert!(l.t_min <= l.t_avg && l.t_avg <= l.t_max);
        prop_assert!(l.t_stdev.is_finite() && l.t_stdev_exact.is_finite());
        let halved = Latency::from_stamps(&stamps_from(&deltas), &clock(), true).unwrap();
        prop_assert!(close(halved.t_typical * 2.0, l.t_typical));
        prop_assert!(close(halved.percentile_99 * 2.0, l.percentile_99));
        prop_assert!(close(halved.t_stdev_exact * 2.0, l.t_stdev_exact));
    }
}
