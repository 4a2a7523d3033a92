//! Latency and bandwidth figures computed the way perftest computes them, so that a line of
//! `rdma-bench` and a line of `ib_send_lat` / `ib_send_bw` can be compared number for number.
//!
//! Sources (linux-rdma/perftest): `print_report_lat` and `get_median` in
//! `src/perftest_parameters.c` for latency; `print_report_bw` in the same file for bandwidth;
//! the stamps are taken as in `run_iter_lat_send` / `run_iter_lat_write` / `run_iter_bw` in
//! `src/perftest_resources.c` (one stamp before each post; for bandwidth, one per completion).

use std::time::Duration;

use serde::Serialize;

use crate::clock::CycleClock;

/// perftest's `LAT_MEASURE_TAIL`: how many of the largest samples `print_report_lat` leaves
/// out of every figure but `t_max` (which it reads just past the kept ones).
pub const LAT_MEASURE_TAIL: usize = 2;

/// perftest's MiB (`format_factor` for the default MiB/s report: `0x100000`).
const MIB: f64 = 1_048_576.0;

/// perftest's latency report, in microseconds, computed exactly as `print_report_lat`
/// (perftest `src/perftest_parameters.c`) does for the iterations tests:
///
/// 1. `n + 1` stamps, one before each post, give `n` samples `stamp[i + 1] - stamp[i]`
///    (cycles); for ping-pong tests (send_lat, write_lat: `rtt_factor` 2) every figure is
///    divided by 2, for read_lat (and atomics) it is not;
/// 2. the samples are sorted and the [`LAT_MEASURE_TAIL`] (2) largest are dropped, leaving `m`;
/// 3. `t_min = sorted[0]`, `t_max = sorted[m]` (the second largest sample: the first dropped
///    one, as perftest reads it), `t_typical` = the median of the `m` kept samples (`get_median`:
///    the middle one for odd `m`, the integer mean in cycles of the two middle ones for even
///    `m`), `t_avg` their mean, `percentile_99 = sorted[ceil(0.99 m)]` and
///    `percentile_99_9 = sorted[ceil(0.999 m)]` (which, like `t_max`, may land on a dropped
///    sample: for `m < 1000` the 99.9% percentile is `t_max`);
/// 4. `t_stdev` as perftest: `sqrt(sum(d_i^2) / m)` where each deviation `d_i = t_avg - x_i`
///    is truncated to a whole microsecond (perftest stores it in an `int`), so sub-microsecond
///    spread reads 0; [`t_stdev_exact`](Self::t_stdev_exact) is the same without truncation.
///
/// `p50` is not a perftest column: it is `sorted[ceil(0.5 m)]`, the 50th percentile by the
/// same rule as the 99th (for odd `m` one sample above the median).
///
/// Differences from perftest, both for broken input only: a stamp smaller than the one before
/// gives a sample of 0 (perftest's unsigned subtraction would give ~2^64); the median's mean
/// of two is taken without overflow.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Iterations measured: the number of stamps (perftest's `n_iterations`). Not written on
    /// its own: [`RunResult`] writes it as `n_iterations`.
    #[serde(skip)]
    pub iters: usize,
    /// Smallest sample.
    pub t_min: f64,
    /// `sorted[m]`: the largest kept sample's successor, the second largest overall.
    pub t_max: f64,
    /// Median of the kept samples.
    pub t_typical: f64,
    /// Mean of the kept samples.
    pub t_avg: f64,
    /// Standard deviation as perftest prints it (whole-microsecond deviations).
    pub t_stdev: f64,
    /// Standard deviation of the kept samples without perftest's truncation.
    pub t_stdev_exact: f64,
    /// `sorted[ceil(0.99 m)]`.
    pub percentile_99: f64,
    /// `sorted[ceil(0.999 m)]`.
    #[serde(rename = "percentile_99.9")]
    pub percentile_99_9: f64,
    /// `sorted[ceil(0.5 m)]`.
    pub p50: f64,
}

impl Latency {
    /// The report for `stamps` (one per iteration, taken before each post), or `None` when
    /// there are too few for one kept sample (fewer than `LAT_MEASURE_TAIL + 1` samples, that
    /// is fewer than 4 stamps), where perftest would index out of bounds. `rtt_halved`: the
    /// stamps measure round trips of a ping-pong (send_lat, write_lat), report half.
    pub fn from_stamps(stamps: &[u64], clock: &CycleClock, rtt_halved: bool) -> Option<Self> {
        let mut delta = deltas(stamps);
        if delta.len() <= LAT_MEASURE_TAIL {
            return None;
        }
        delta.sort_unstable();
        let m = delta.len() - LAT_MEASURE_TAIL;
        let rtt_factor = if rtt_halved { 2.0 } else { 1.0 };
        let usec = |cycles: u64| clock.to_usec(cycles) / rtt_factor;

        let median = if m.is_multiple_of(2) {
            // perftest: (delta[n/2] + delta[n/2 - 1]) / 2 in integer cycles.
            ((u128::from(delta[m / 2]) + u128::from(delta[m / 2 - 1])) / 2) as u64
        } else {
            delta[m / 2]
        };
        let kept = &delta[..m];
        let t_avg = kept.iter().map(|&c| usec(c)).sum::<f64>() / m as f64;
        let (mut truncated_sum, mut exact_sum) = (0.0, 0.0);
        for &c in kept {
            let deviation = t_avg - usec(c);
            truncated_sum += deviation.trunc().powi(2);
            exact_sum += deviation.powi(2);
        }
        Some(Self {
            iters: stamps.len(),
            t_min: usec(delta[0]),
            t_max: usec(delta[m]),
            t_typical: usec(median),
            t_avg,
            t_stdev: (truncated_sum / m as f64).sqrt(),
            t_stdev_exact: (exact_sum / m as f64).sqrt(),
            percentile_99: usec(delta[percentile_index(m, 0.99)]),
            percentile_99_9: usec(delta[percentile_index(m, 0.999)]),
            p50: usec(delta[percentile_index(m, 0.5)]),
        })
    }

    /// Every sample in microseconds, in the order taken, none dropped (halved like the
    /// report when `rtt_halved`): what perftest prints with `-U`, and what the CDF plot draws.
    pub fn samples_usec(stamps: &[u64], clock: &CycleClock, rtt_halved: bool) -> Vec<f64> {
        let rtt_factor = if rtt_halved { 2.0 } else { 1.0 };
        deltas(stamps)
            .into_iter()
            .map(|cycles| clock.to_usec(cycles) / rtt_factor)
            .collect()
    }
}

/// `stamp[i + 1] - stamp[i]`, 0 where the clock went backwards.
fn deltas(stamps: &[u64]) -> Vec<u64> {
    stamps
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}

/// perftest's percentile index, `ceil(m * q)` computed in doubles as C does. At most `m`
/// for `q < 1` (the sample array holds `m + LAT_MEASURE_TAIL` values, so it is in bounds).
fn percentile_index(m: usize, q: f64) -> usize {
    (m as f64 * q).ceil() as usize
}

/// perftest's bandwidth report, computed as `print_report_bw` (perftest
/// `src/perftest_parameters.c`) does for one QP, no post list, iterations mode:
///
/// * `bw_average = size * n / T` in MiB/s and `msg_rate = n / T` in Mpps (10^6 messages per
///   second), where `T = completion[n - 1] - post[0]`: from the first post to the last
///   completion;
/// * `bw_peak = size / opt_delta` in MiB/s, where `opt_delta` is the smallest average time per
///   message over any window of consecutive messages: the minimum over `i <= j` of
///   `(completion[j] - post[i]) / (j - i + 1)` in whole cycles (integer division, as perftest),
///   `j` running over the stamped completions: [`peak_cycles_per_message`].
///
/// A window shorter than one cycle counts as one cycle (perftest would divide by zero).
#[derive(Clone, Debug, Serialize)]
pub struct Bandwidth {
    /// Peak bandwidth, MiB/s.
    #[serde(rename = "BW_peak")]
    pub bw_peak: f64,
    /// Average bandwidth over the run, MiB/s.
    #[serde(rename = "BW_average")]
    pub bw_average: f64,
    /// Messages per second over the run, in millions (perftest's Mpps).
    #[serde(rename = "MsgRate")]
    pub msg_rate: f64,
}

impl Bandwidth {
    /// The report for a run of `size`-byte messages where `post_stamps[i]` was taken just
    /// before posting message `i` and `completion_stamps[j]` when its completion was polled
    /// (every message signalled). `None` for an empty run, stamp slices of different lengths,
    /// or a run that took no time (the figures would be infinite).
    pub fn from_run(
        size: usize,
        post_stamps: &[u64],
        completion_stamps: &[u64],
        clock: &CycleClock,
    ) -> Option<Self> {
        Self::from_run_moderated(size, post_stamps, completion_stamps, 1, clock)
    }

    /// As [`from_run`](Self::from_run) with CQ moderation (perftest's `--cq-mod`): only every
    /// `cq_mod`-th message is signalled, so only `completion_stamps[j]` with
    /// `(j + 1) % cq_mod == 0`, and the last one, are read (the others may hold anything).
    /// `cq_mod` 0 counts as 1.
    pub fn from_run_moderated(
        size: usize,
        post_stamps: &[u64],
        completion_stamps: &[u64],
        cq_mod: usize,
        clock: &CycleClock,
    ) -> Option<Self> {
        let n = post_stamps.len();
        if n == 0 || completion_stamps.len() != n {
            return None;
        }
        let total_cycles = completion_stamps[n - 1].saturating_sub(post_stamps[0]);
        let seconds = clock.to_usec(total_cycles) / 1e6;
        if seconds.is_nan() || seconds <= 0.0 {
            return None;
        }
        let opt_delta = peak_cycles_per_message(post_stamps, completion_stamps, cq_mod)?;
        let peak_seconds = clock.to_usec(opt_delta.max(1)) / 1e6;
        Some(Self {
            bw_peak: size as f64 / peak_seconds / MIB,
            bw_average: size as f64 * n as f64 / seconds / MIB,
            msg_rate: n as f64 / seconds / 1e6,
        })
    }
}

/// perftest's `opt_delta` (`print_report_bw`): the smallest average cycles per message over a
/// window of consecutive messages, `min over i <= j of floor((completion[j] - post[i]) /
/// (j - i + 1))`, `j` running over the stamped completions (with `cq_mod` > 1 only
/// `(j + 1) % cq_mod == 0` and the last; 0 counts as 1). `None` for an empty run or slices of
/// different lengths. A window whose completion precedes its post (broken stamps) counts as 0.
///
/// perftest tries every pair; this binary-searches the answer `t` instead, `O(n log T)`: some
/// window has `floor(..) <= t` iff `c[j] - p[i] <= (t + 1)(j - i + 1) - 1`, that is iff, with
/// `s = t + 1`, `max over i <= j of (p[i] - s*i) > c[j] - s*(j + 1)` for some stamped `j`: one
/// pass with a running maximum. The predicate only grows with `t`, and the whole run
/// (`i = 0, j = n - 1`) bounds the answer from above.
pub fn peak_cycles_per_message(post: &[u64], completion: &[u64], cq_mod: usize) -> Option<u64> {
    let n = post.len();
    if n == 0 || completion.len() != n {
        return None;
    }
    let cq_mod = cq_mod.max(1);
    let stamped = |j: usize| (j + 1).is_multiple_of(cq_mod) || j == n - 1;
    let some_window_at_most = |t: u64| {
        let s = i128::from(t) + 1;
        let mut best_start = i128::MIN;
        (0..n).any(|j| {
            best_start = best_start.max(i128::from(post[j]) - s * j as i128);
            stamped(j) && best_start > i128::from(completion[j]) - s * (j as i128 + 1)
        })
    };
    let whole_run = completion[n - 1].saturating_sub(post[0]) / n as u64;
    let (mut lo, mut hi) = (0u64, whole_run);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if some_window_at_most(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// One run's result: what `--json` writes (one object per run, flat, the perftest figures
/// under perftest's `--out_json` keys: `n_iterations`, `t_min`, `t_max`, `t_typical`,
/// `t_avg`, `t_stdev`, `percentile_99`, `percentile_99.9`, `BW_peak`, `BW_average`,
/// `MsgRate`; plus `mode`, `test`, `size`, `flows`, `p50`, `t_stdev_exact`,
/// `cpu_usec_per_op` and `ops_per_sec`). Absent figures (no latency for a bandwidth test) are
/// left out.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Dispatch mode (`busy-poll`, `event`, `callback`, `async`, `async-mt`).
    pub mode: String,
    /// Test name (`send_lat`, `write_bw`, ...).
    pub test: String,
    /// Message size in bytes.
    pub size: usize,
    /// Number of connections (flows) in the run.
    pub flows: usize,
    /// Worker threads of the runtime (`async-mt` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Iterations measured (perftest's `n_iterations`).
    #[serde(rename = "n_iterations")]
    pub iters: usize,
    /// Latency figures (latency tests).
    #[serde(flatten)]
    pub latency: Option<Latency>,
    /// Bandwidth figures (bandwidth tests).
    #[serde(flatten)]
    pub bandwidth: Option<Bandwidth>,
    /// Process CPU time (user + system) per operation, microseconds: see [`cpu_usec_per_op`].
    pub cpu_usec_per_op: f64,
    /// Operations per second of wall time: see [`ops_per_sec`].
    pub ops_per_sec: f64,
    /// Every latency sample in microseconds ([`Latency::samples_usec`]), for the CDF plot.
    #[serde(skip)]
    pub samples_usec: Vec<f64>,
    /// `compare --rounds` (more than 1), latency tests: each round's `t_typical`, in the
    /// order run, so a ratio between two modes can be taken within each round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds_t_typical: Vec<f64>,
}

/// CPU time per operation in microseconds (`cpu` from the difference of two
/// [`cpu_time`](crate::clock::cpu_time) readings around the run); 0 for a run of no
/// operations.
pub fn cpu_usec_per_op(cpu: Duration, ops: usize) -> f64 {
    if ops == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / ops as f64
}

/// Operations per second over `wall` time; 0 for a run that took no time (the rate is
/// undefined, and JSON has no infinity).
pub fn ops_per_sec(ops: usize, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    ops as f64 / wall.as_secs_f64()
}
