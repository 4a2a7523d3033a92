//! Time sources for the harness: a calibrated cycle counter for per-iteration stamps (what
//! perftest's `get_cycles()` is) and the process's CPU time (user + system).
//!
//! perftest stamps with the raw TSC and converts with the CPU frequency it reads from
//! `/proc/cpuinfo` (`get_cpu_mhz` in perftest's `src/get_clock.c`). [`CycleClock`] uses
//! `quanta` instead: the same TSC read where the TSC is usable, with its rate calibrated
//! against the monotonic clock (and the monotonic clock itself, one tick per nanosecond,
//! where it is not).

use std::sync::Arc;
use std::time::Duration;

/// How many cycles the conversion factor is measured over: large, so the factor keeps the
/// full precision of quanta's fixed-point scale instead of whole nanoseconds per cycle.
const SCALE_PROBE_CYCLES: u64 = 1 << 40;

/// Cycle clock: one stamp per iteration, converted to microseconds afterwards.
///
/// Cheap to copy (the calibration is done once per process by quanta); build it before the
/// measured loop, as building the first one calibrates.
#[derive(Clone, Debug)]
pub struct CycleClock {
    clock: quanta::Clock,
    /// Microseconds per cycle (the inverse of perftest's `cycles_to_units`, the CPU MHz).
    usec_per_cycle: f64,
}

impl CycleClock {
    /// The process's cycle clock (TSC where quanta finds it usable).
    pub fn new() -> Self {
        Self::from_quanta(quanta::Clock::new())
    }

    /// A clock whose stamps are set by hand through the returned handle, at one cycle per
    /// nanosecond: for tests (known stamps give known microseconds).
    pub fn mock() -> (Self, Arc<quanta::Mock>) {
        let (clock, mock) = quanta::Clock::mock();
        (Self::from_quanta(clock), mock)
    }

    fn from_quanta(clock: quanta::Clock) -> Self {
        let nanos = clock.delta_as_nanos(0, SCALE_PROBE_CYCLES);
        let usec_per_cycle = nanos as f64 / 1000.0 / SCALE_PROBE_CYCLES as f64;
        Self {
            clock,
            usec_per_cycle,
        }
    }

    /// The current cycle count (perftest's `get_cycles()`). Only differences of stamps from
    /// the same clock mean anything.
    #[inline]
    pub fn stamp(&self) -> u64 {
        self.clock.raw()
    }

    /// A number of cycles (a difference of stamps) in microseconds.
    #[inline]
    pub fn to_usec(&self, cycles: u64) -> f64 {
        cycles as f64 * self.usec_per_cycle
    }

    /// Cycles per microsecond: the figure perftest calls the CPU MHz (`get_cpu_mhz`).
    pub fn cycles_per_usec(&self) -> f64 {
        1.0 / self.usec_per_cycle
    }
}

impl Default for CycleClock {
    fn default() -> Self {
        Self::new()
    }
}

/// CPU time (user + system) the whole process has used so far, all threads together: a
/// spinning poller shows up here, a thread blocked in the kernel does not.
pub fn cpu_time() -> Duration {
    cpu_time::ProcessTime::now().as_duration()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_clock_counts_one_cycle_per_nanosecond() {
        let (clock, mock) = CycleClock::mock();
        let a = clock.stamp();
        mock.increment(2_500);
        let b = clock.stamp();
        assert_eq!(b - a, 2_500);
        assert_eq!(clock.to_usec(b - a), 2.5);
        assert_eq!(clock.cycles_per_usec(), 1000.0);
    }

    #[test]
    fn real_clock_advances_at_a_plausible_rate() {
        let clock = CycleClock::new();
        let a = clock.stamp();
        let wall = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed_usec = clock.to_usec(clock.stamp().wrapping_sub(a));
        let wall_usec = wall.elapsed().as_secs_f64() * 1e6;
        // Generous bounds: a loaded 2-core machine may stretch the sleep, never shrink it.
        assert!(elapsed_usec >= 19_000.0, "{elapsed_usec}");
        assert!((elapsed_usec - wall_usec).abs() < wall_usec * 0.05 + 500.0);
        // Somewhere between 100 MHz and 10 GHz (1 tick per ns where there is no TSC).
        assert!((100.0..10_000.0).contains(&clock.cycles_per_usec()));
    }

    #[test]
    fn cpu_time_grows_while_spinning() {
        let before = cpu_time();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time() > before);
    }
}
