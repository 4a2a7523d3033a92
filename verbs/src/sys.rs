//! Raw-fd helpers shared by every owner of an ibverbs file descriptor: non-blocking mode and
//! registration with tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

/// A borrowed raw fd: dropping it does not close the fd.
pub(crate) struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Sets `O_NONBLOCK` on an fd owned by an ibverbs object (`what` names it in errors).
pub(crate) fn set_nonblocking(fd: RawFd, what: &str) -> Result<()> {
    // SAFETY: fcntl on an fd we own (it belongs to a live ibverbs object); no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::Io {
            context: format!("setting O_NONBLOCK on the {what} fd"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Wraps a borrowed fd (owned by an ibverbs object, closed by it) for tokio.
///
/// # Safety
/// `fd` must be open and stay open (same file description) until the returned `AsyncFd` is
/// dropped: its owner must drop the `AsyncFd` before destroying the ibverbs object.
pub(crate) unsafe fn async_fd(fd: RawFd, what: &str) -> Result<AsyncFd<Fd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Io {
            context: format!("registering the {what} fd needs a tokio runtime"),
            source: io::Error::other("no tokio runtime"),
        });
    }
    // SAFETY: the caller keeps `fd` open for the AsyncFd's lifetime; `Fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Io {
            context: format!("registering the {what} fd with tokio"),
            source: e.into_parts().1,
        }
    })
}
