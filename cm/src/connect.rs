//! The active side: resolve the address, resolve the route, connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use rdma_sys as ffi;
use tokio_rdma_core::{ActiveOpen, ConnectAction, ConnectFailure};

use crate::addr::RawAddr;
use crate::bound::for_answer;
use crate::channel::EventChannel;
use crate::connection::{Connection, Parts};
use crate::device::Device;
use crate::driver::{current_channel, CONNECTION_QUEUE};
use crate::error::{Error, Result, Step};
use crate::id::Id;
use crate::options::{check_private_data, conn_param, ConnectOptions, MAX_CONNECT_PRIVATE_DATA};
use crate::stream::{failure, next_raw, ConnectionEvents};

/// Connects to a listener at `addr`: resolves the address and the route, creates the QP
/// and CQ on the device the route leads to, and runs the CM handshake, each step bounded by
/// its timeout in `opts` and the whole by `opts.timeout`. A stall of the process cannot fail a
/// step whose answer the kernel had queued in time: the resolutions end on the kernel's
/// answer, and the timers of ours wait for the channel's events to be routed
/// (`crate::bound`).
///
/// Errors tell the cases apart: [`Error::Unreachable`] (no route, nobody answers),
/// [`Error::Refused`] (nobody listens on that port), [`Error::Rejected`] (the peer
/// application said no, with its private data), [`Error::TimedOut`] (with the step).
pub async fn connect(addr: SocketAddr, opts: ConnectOptions) -> Result<Connection> {
    check_private_data(&opts.private_data, MAX_CONNECT_PRIVATE_DATA, "connect")?;
    let step = StepCell(Mutex::new(Step::ResolveAddr));
    let channel = current_channel()?;
    match for_answer(
        &channel,
        opts.timeout,
        attempt(addr, &opts, &step, &channel),
    )
    .await
    {
        Some(r) => r,
        None => Err(Error::TimedOut {
            step: step.get(),
            addr,
            after: opts.timeout,
        }),
    }
}

async fn attempt(
    addr: SocketAddr,
    opts: &ConnectOptions,
    step: &StepCell,
    channel: &Arc<EventChannel>,
) -> Result<Connection> {
    let (id, rx) = Id::create(channel, CONNECTION_QUEUE)?;
    let mut events = ConnectionEvents::new(rx);
    let mut open = ActiveOpen::new();

    let mut dst = RawAddr::new(addr);
    let mut src = opts.src_addr.map(RawAddr::new);
    let src_ptr = src.as_mut().map_or(std::ptr::null_mut(), RawAddr::as_ptr);
    // SAFETY: the id is live; both addresses are valid sockaddrs for the call (librdmacm
    // copies them).
    let rc = unsafe {
        ffi::rdma_resolve_addr(
            id.as_ptr(),
            src_ptr,
            dst.as_ptr(),
            millis(opts.resolve_addr_timeout),
        )
    };
    if rc != 0 {
        return Err(refused_at_once(
            "rdma_resolve_addr",
            Step::ResolveAddr,
            addr,
        ));
    }
    resolved(
        &mut events,
        &mut open,
        addr,
        opts.resolve_addr_timeout,
        ConnectAction::ResolveRoute,
    )
    .await?;

    step.set(Step::ResolveRoute);
    // SAFETY: the id is live and its address resolved.
    if unsafe { ffi::rdma_resolve_route(id.as_ptr(), millis(opts.resolve_route_timeout)) } != 0 {
        return Err(refused_at_once(
            "rdma_resolve_route",
            Step::ResolveRoute,
            addr,
        ));
    }
    resolved(
        &mut events,
        &mut open,
        addr,
        opts.resolve_route_timeout,
        ConnectAction::Connect,
    )
    .await?;

    step.set(Step::Connect);
    let id = Arc::new(id);
    let device = Device::for_id(&id, channel)?;
    let initiator = opts.initiator_depth.min(device.max_initiator);
    let responder = opts.responder_resources.min(device.max_responder);
    let parts = Parts::build(id.clone(), device, &opts.qp)?;
    let sent = {
        let mut param = conn_param(
            &opts.private_data,
            initiator,
            responder,
            opts.retry_count,
            opts.rnr_retry_count,
            parts.qp.qp_num(),
        );
        // SAFETY: the id is live with its route resolved; `param` points into
        // `opts.private_data`, alive for the call (librdmacm copies it).
        unsafe { ffi::rdma_connect(id.as_ptr(), &mut param) == 0 }
    };
    if !sent {
        return Err(Error::last_os("rdma_connect", format!("to {addr}")));
    }
    let (private_data, params) = for_answer(channel, opts.connect_timeout, async {
        loop {
            let e = next_raw(&mut events).await?;
            match open.handle(e.kind, e.status) {
                ConnectAction::Establish => return Ok((e.private_data, e.params)),
                ConnectAction::Fail(f) => return Err(failure(f, addr, e.private_data)),
                _ => {}
            }
        }
    })
    .await
    .ok_or(Error::TimedOut {
        step: Step::Connect,
        addr,
        after: opts.connect_timeout,
    })??;
    // The depths the kernel negotiated from the peer's response (never our offer, which the
    // peer may have lowered), as librdmacm does for its own QPs.
    let ready = crate::transition::to_rtr(&id, &parts.qp, None, opts.qp.min_rnr_timer)
        .and_then(|()| crate::transition::to_rts(&id, &parts.qp, None))
        .and_then(|()| {
            // SAFETY: the id is live, the peer accepted, and it has no librdmacm QP (ours is
            // a verbs QP, moved to RTS above): this sends the RTU.
            if unsafe { ffi::rdma_establish(id.as_ptr()) } != 0 {
                return Err(Error::last_os("rdma_establish", format!("to {addr}")));
            }
            Ok(())
        });
    if let Err(e) = ready {
        // What librdmacm does when its own QP cannot follow: QP to ERR, reject the reply.
        let _ = parts.qp.set_error();
        id.reject(&[]);
        return Err(e);
    }
    open.established();
    id.route().set_up();
    Ok(Connection::new(parts, events, private_data, params))
}

/// Waits for the kernel's answer to a resolution it was given `bound` for.
///
/// The kernel answers (resolved, or an error event once its timeout passed), so no timer of
/// ours races it: a timer would fire whenever this process or its runtime stalled past
/// `bound` after the kernel answered (a local address resolves in microseconds) but before the
/// channel's driver routed the answer, and fail a resolution that succeeded. Should an answer
/// be late (an InfiniBand path query through ibacm) or lost (the kernel could not allocate
/// the event), `ConnectOptions::timeout` still ends the attempt. The kernel's `-ETIMEDOUT` is
/// reported as [`Error::TimedOut`] after `bound`.
async fn resolved(
    events: &mut ConnectionEvents,
    open: &mut ActiveOpen,
    addr: SocketAddr,
    bound: Duration,
    want: ConnectAction,
) -> Result<()> {
    loop {
        let e = next_raw(events).await?;
        match open.handle(e.kind, e.status) {
            a if a == want => return Ok(()),
            ConnectAction::Fail(f) => {
                return Err(resolution_failure(f, addr, bound, e.private_data))
            }
            _ => {}
        }
    }
}

/// A resolution's failure: the kernel's `-ETIMEDOUT` (nothing answered within `bound`) is
/// [`Error::TimedOut`], the rest as [`failure`] tells.
fn resolution_failure(
    f: ConnectFailure,
    addr: SocketAddr,
    bound: Duration,
    private_data: Vec<u8>,
) -> Error {
    match f {
        ConnectFailure::Unreachable { step, status } if status == -libc::ETIMEDOUT => {
            Error::TimedOut {
                step,
                addr,
                after: bound,
            }
        }
        f => failure(f, addr, private_data),
    }
}

/// The step in progress, read when the whole attempt times out.
struct StepCell(Mutex<Step>);

impl StepCell {
    fn get(&self) -> Step {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set(&self, step: Step) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }
}

/// A resolution call that failed at once: no route or no device is unreachable; anything
/// else is reported as the call's error.
fn refused_at_once(call: &'static str, step: Step, addr: SocketAddr) -> Error {
    let e = Error::last_os(call, format!("to {addr}"));
    match e.errno() {
        Some(
            errno @ (libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL | libc::ENODEV),
        ) => Error::Unreachable {
            step,
            addr,
            status: -errno,
        },
        _ => e,
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().clamp(1, i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_resolution_timeout_is_timed_out_other_failures_unreachable() {
        let addr: SocketAddr = "192.0.2.9:7000".parse().unwrap();
        let bound = Duration::from_secs(2);
        let timed_out = ConnectFailure::Unreachable {
            step: Step::ResolveAddr,
            status: -libc::ETIMEDOUT,
        };
        match resolution_failure(timed_out, addr, bound, Vec::new()) {
            Error::TimedOut { step, after, .. } => {
                assert_eq!((step, after), (Step::ResolveAddr, bound))
            }
            e => panic!("{e:?}"),
        }
        let no_host = ConnectFailure::Unreachable {
            step: Step::ResolveRoute,
            status: -libc::EHOSTUNREACH,
        };
        match resolution_failure(no_host, addr, bound, Vec::new()) {
            Error::Unreachable { step, status, .. } => {
                assert_eq!((step, status), (Step::ResolveRoute, -libc::EHOSTUNREACH))
            }
            e => panic!("{e:?}"),
        }
    }
}
