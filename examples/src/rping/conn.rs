//! What both sides do on an established connection: wait for the peer's next message (or its
//! disconnect), send a message, run an RDMA operation unless the connection goes away.

use std::future::Future;
use std::io::Write as _;

use futures_util::StreamExt;
use tokio_rdma_cm::{Connection, ConnectionEvent};
use tokio_rdma_verbs::{self as verbs, RecvMessage, RecvStream, WcStatus};

use super::error::{Error, Result};
use super::pattern::c_str;
use super::wire::INFO_LEN;

/// Receive buffers kept posted (rping posts one; two leave room for a peer sending early).
pub(super) const RECV_DEPTH: u32 = 2;
/// Receive buffer size: bigger than a message, so a wrong-sized one arrives whole and is
/// reported with its size (one bigger still fails the receive, which ends the connection too).
pub(super) const RECV_SIZE: usize = 64;

/// Which side we are, for rping's messages ("server DISCONNECT EVENT...").
#[derive(Clone, Copy, Debug)]
pub(super) struct Side {
    pub name: &'static str,
    pub quiet: bool,
    pub debug: bool,
}

/// Runs `op` until it finishes (`Some`) or the connection goes away (`None`); other
/// connection events are ignored, as rping does.
pub(super) async fn until_closed<F: Future>(
    conn: &mut Connection,
    side: Side,
    op: F,
) -> Option<F::Output> {
    tokio::pin!(op);
    loop {
        tokio::select! {
            biased;
            out = &mut op => return Some(out),
            ev = conn.next_event() => match ev {
                Some(ConnectionEvent::Disconnected) => {
                    if !side.quiet {
                        eprintln!("{} DISCONNECT EVENT...", side.name);
                    }
                    return None;
                }
                Some(ConnectionEvent::DeviceRemoval) => {
                    eprintln!("cma detected device removal!!!!");
                    return None;
                }
                None => return None,
                Some(other) => {
                    if side.debug {
                        println!("cma event {other:?}, ignoring");
                    }
                }
            },
        }
    }
}

/// The peer's next message; `None` once the connection is closed (a disconnect, or the
/// receives flushed because the QP left RTS).
pub(super) async fn next_message(
    conn: &mut Connection,
    rx: &mut RecvStream,
    side: Side,
) -> Result<Option<RecvMessage>> {
    match until_closed(conn, side, rx.next()).await {
        None | Some(None) => Ok(None),
        Some(Some(Ok(m))) => Ok(Some(m)),
        Some(Some(Err(e))) if is_flush(&e) => Ok(None),
        Some(Some(Err(e))) => Err(Error::Verbs {
            what: "receive",
            source: e,
        }),
    }
}

/// SENDs one message; `what` names it in errors.
pub(super) async fn send_message(
    conn: &mut Connection,
    side: Side,
    msg: [u8; INFO_LEN],
    what: &'static str,
) -> Result<()> {
    let qp = conn.qp().clone();
    match until_closed(conn, side, qp.send_inline(&msg)).await {
        None => Err(Error::Disconnected("before our SEND completed")),
        // Flushed: the QP left RTS because the connection went.
        Some((Err(e), ())) if is_flush(&e) => Err(Error::Disconnected("before our SEND completed")),
        Some((res, ())) => res.map(drop).map_err(Error::verbs(what)),
    }
}

/// A completion flushed because the QP went to the error state (the connection is going).
pub(super) fn is_flush(e: &verbs::Error) -> bool {
    matches!(
        e,
        verbs::Error::Completion {
            status: WcStatus::WrFlushErr,
            ..
        } | verbs::Error::Closed(_)
    )
}

/// `printf("%s%s\n", label, data)`: the bytes up to the first NUL, unconverted, in one write.
pub(super) fn print_line(label: &[u8], data: &[u8]) {
    let mut line = Vec::with_capacity(label.len() + data.len() + 1);
    line.extend_from_slice(label);
    line.extend_from_slice(c_str(data));
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    // stdout gone (a closed pipe) is no reason to stop serving.
    let _ = out.write_all(&line).and_then(|()| out.flush());
}
