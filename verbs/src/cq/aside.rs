//! The driver standing aside while a future spins on its CQ, on a multi-thread runtime.
//!
//! A future whose completion is not there after its inline polls takes spin turns on its own
//! CQ while that CQ is the driver's only active one (`CqInner::spin_turn`). On a
//! current-thread runtime the future and the driver take turns on one thread. On a
//! multi-thread runtime they run on two workers, and both poll the same CQ, so one busy
//! connection keeps two workers polling. Where cores are scarce, the peer and the kernel then
//! wait for a core. In the soft-RoCE VM (2 vCPUs), a 2-byte ping-pong's p99 was about 4 ms,
//! against 0.2 ms on a current-thread runtime.
//!
//! So, after a round that found nothing, a driver on a multi-thread runtime stands aside when
//! three things hold: its only active CQ has had spin turns since its last yield, no future
//! waits for the driver there (`CqInner::begin_wait`), and nothing nudged it since then. It
//! stops polling and waits for the first of:
//! - a nudge: a future started waiting for the driver, a CQ of the channel was added or
//!   removed, or a fault was injected (`Registry::nudge_driver`);
//! - the channel fd turning readable: an event of another, parked CQ;
//! - [`ASIDE_BOUND`], on a timerfd of its own.
//!
//! The bound covers what no future waits for: buffers that dropped futures left in slots,
//! and flushes a teardown waits for. None of these waits longer than the bound. A future
//! that starts waiting nudges the driver, and keeps it from standing aside until it is done.
//! The timer is a timerfd, not tokio's, because a runtime built without tokio's time driver
//! must not make the driver panic. If the timerfd cannot be made, the driver never stands
//! aside.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::queue::CqRegistry;
use crate::sys::Fd;

/// The longest the driver stands aside before it polls again.
pub(super) const ASIDE_BOUND: Duration = Duration::from_millis(1);

/// A one-shot `CLOCK_MONOTONIC` timerfd, registered with the runtime's reactor.
pub(super) struct AsideTimer {
    fd: AsyncFd<OwnedFd>,
}

impl AsideTimer {
    /// A disarmed timer (it needs a runtime with I/O enabled, as the channel fd does).
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: a plain system call with valid flags; no memory involved.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd that nothing else owns; `OwnedFd` closes it once.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` keeps the fd open, and returns it, for as long as the
        // `AsyncFd` that owns it lives.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Expires once, `after` from now (replacing any earlier setting, and with it any
    /// expiration not read yet).
    fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero `it_value` would disarm it.
        self.set(after.max(Duration::from_nanos(1)))
    }

    /// `timerfd_settime` with `after` as the expiry (zero: disarmed).
    fn set(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos()),
            },
        };
        // SAFETY: the fd is a live timerfd owned by `self`; `spec` is valid for the call; a
        // null old value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the timer (an expiration not read yet is dropped with it).
    fn disarm(&self) -> io::Result<()> {
        self.set(Duration::ZERO)
    }

    /// Until the timer has expired (readiness left over from an earlier setting is cleared
    /// on the way: its read finds nothing).
    async fn expired(&self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                // The reactor is gone (runtime shutting down): never.
                return std::future::pending().await;
            };
            let read = ready.try_io(|fd| {
                let mut count = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte buffer from a live timerfd.
                let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(Ok(())) => return,
                // Not EAGAIN (which `try_io` turns into `Err` and clears the readiness): the
                // readiness stays, so looping would spin. Count it as expired.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading the driver's timerfd failed");
                    return;
                }
                Err(_would_block) => {}
            }
        }
    }
}

/// Waits, as the module docs say, for a nudge past `nudges`, the channel fd, or `bound`.
/// Whether it returned `Pending` at least once (so the runtime ran other tasks meanwhile);
/// `false` also when the timer could not be armed.
pub(super) async fn stand_aside(
    registry: &CqRegistry,
    nudges: u32,
    channel: &AsyncFd<Fd>,
    timer: &AsideTimer,
    bound: Duration,
) -> bool {
    if registry.nudges() != nudges {
        return false;
    }
    if let Err(e) = timer.arm(bound) {
        tracing::debug!(error = %e, "arming the driver's timerfd failed");
        return false;
    }
    let mut readable = pin!(channel.readable());
    let mut expired = pin!(timer.expired());
    let mut waited = false;
    let by_timer = std::future::poll_fn(|cx| {
        registry.register_driver(cx.waker());
        if registry.nudges() != nudges || readable.as_mut().poll(cx).is_ready() {
            Poll::Ready(false)
        } else if expired.as_mut().poll(cx).is_ready() {
            Poll::Ready(true)
        } else {
            waited = true;
            Poll::Pending
        }
    })
    .await;
    // Nothing left behind: no waker for the next nudge to wake, no expiry to come.
    registry.take_driver();
    if !by_timer {
        if let Err(e) = timer.disarm() {
            tracing::debug!(error = %e, "disarming the driver's timerfd failed");
        }
    }
    waited
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::unix::AsyncFd;

    use super::{stand_aside, AsideTimer};
    use crate::cq::queue::CqRegistry;
    use crate::sys::{async_fd, Fd};

    /// A "channel" fd (a pipe's read end) and a timer on a multi-thread runtime with I/O but
    /// without tokio's timer: standing aside must not need it.
    struct Setup {
        registry: Arc<CqRegistry>,
        channel: AsyncFd<Fd>,
        timer: AsideTimer,
        write_end: OwnedFd,
        _read_end: OwnedFd,
        rt: tokio::runtime::Runtime,
    }

    fn setup() -> Setup {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .build()
            .unwrap();
        let _in = rt.enter();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: both fds are new and owned by nothing else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Setup {
            registry: Arc::default(),
            // SAFETY: the read end stays open in `Setup`, which drops `channel` first.
            channel: unsafe { async_fd(read_end.as_raw_fd(), "test pipe") }.unwrap(),
            timer: AsideTimer::new().unwrap(),
            write_end,
            _read_end: read_end,
            rt,
        }
    }

    /// How long standing aside with `bound` took, while another thread runs `end` after
    /// `after`.
    fn stand(s: &Setup, bound: Duration, after: Duration, end: impl FnOnce() + Send) -> Duration {
        let nudges = s.registry.nudges();
        std::thread::scope(|scope| {
            let start = Instant::now();
            scope.spawn(move || {
                std::thread::sleep(after);
                end();
            });
            let aside = stand_aside(&s.registry, nudges, &s.channel, &s.timer, bound);
            assert!(s.rt.block_on(aside), "it returned at once");
            start.elapsed()
        })
    }

    const LONG: Duration = Duration::from_secs(30);
    const SOON: Duration = Duration::from_millis(50);

    /// Standing aside with a long bound is ended by `end`, run `SOON` after it started.
    fn ended_by(s: &Setup, end: impl FnOnce() + Send) {
        let took = stand(s, LONG, SOON, end);
        assert!(took >= SOON && took < LONG, "{took:?}");
    }

    #[test]
    fn it_ends_at_its_bound_without_tokio_timers() {
        let s = setup();
        let took = stand(&s, Duration::from_millis(20), Duration::ZERO, || {});
        assert!(took >= Duration::from_millis(20) && took < LONG, "{took:?}");
    }

    #[test]
    fn a_nudge_ends_it() {
        let s = setup();
        let registry = s.registry.clone();
        ended_by(&s, move || registry.nudge_driver());
    }

    #[test]
    fn the_channel_turning_readable_ends_it() {
        let s = setup();
        let fd = s.write_end.as_raw_fd();
        ended_by(&s, move || {
            // SAFETY: writing one byte from a live buffer to the pipe's open write end.
            assert_eq!(unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) }, 1);
        });
    }

    #[test]
    fn a_nudge_since_the_snapshot_ends_it_at_once() {
        let s = setup();
        let nudges = s.registry.nudges();
        s.registry.nudge_driver();
        let aside = stand_aside(&s.registry, nudges, &s.channel, &s.timer, LONG);
        assert!(!s.rt.block_on(aside), "it waited");
    }

    #[test]
    fn ended_early_it_leaves_no_expiry_behind() {
        let s = setup();
        let bound = Duration::from_millis(200);
        let registry = s.registry.clone();
        let took = stand(&s, bound, SOON, move || registry.nudge_driver());
        assert!(took < LONG);
        std::thread::sleep(bound * 2);
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from the live timerfd.
        let n = unsafe { libc::read(s.timer.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        assert_eq!(n, -1, "the timer expired after the stand-aside ended");
    }

    #[test]
    fn an_earlier_expiry_does_not_end_the_next_one() {
        let s = setup();
        // Expires while nobody stands aside, and is not read.
        s.timer.arm(Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let registry = s.registry.clone();
        ended_by(&s, move || registry.nudge_driver());
    }
}
