//! The crate's single error type.

use std::io;

use tokio_rdma_core::{WcOpcode, WcStatus};

/// Everything that can go wrong in `tokio-rdma-verbs`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An ibverbs call failed.
    #[error("{verb} failed ({context}): {source}")]
    Verb {
        /// The libibverbs function that failed (e.g. `ibv_reg_mr`).
        verb: &'static str,
        /// What was being done.
        context: String,
        /// The errno the call reported.
        #[source]
        source: io::Error,
    },
    /// A work request completed with an error status.
    #[error(
        "{} failed: {status:?} (vendor error {vendor_err:#x}, qp {qp_num:#x})",
        posted_name(*.opcode)
    )]
    Completion {
        /// The completion status.
        status: WcStatus,
        /// Provider-specific error code.
        vendor_err: u32,
        /// The operation that was posted, as the opcode its successful completion would carry
        /// (e.g. [`WcOpcode::RdmaRead`] for a READ, [`WcOpcode::Recv`] for any receive). Taken
        /// from the work request, not from the failed completion, whose opcode the spec leaves
        /// undefined.
        opcode: WcOpcode,
        /// The QP the work request belonged to.
        qp_num: u32,
    },
    /// No RDMA device matched.
    #[error("no RDMA device {0}")]
    NoDevice(String),
    /// An argument was out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object has been closed or its queue is in the error state.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// A resource that can have only one user (e.g. the async-event stream) is taken.
    #[error("{0} is already in use")]
    Busy(&'static str),
    /// An error from the dispatch core (e.g. every completion slot of the CQ is in flight:
    /// await outstanding operations first, or size the CQ larger).
    #[error(transparent)]
    Core(#[from] tokio_rdma_core::Error),
    /// A malformed message (e.g. a QP-info blob of the wrong length).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An I/O error outside libibverbs (sysfs, tokio registration).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How [`Error::Completion`] names the posted operation.
fn posted_name(op: WcOpcode) -> &'static str {
    match op {
        WcOpcode::Send => "SEND",
        WcOpcode::RdmaWrite => "RDMA WRITE",
        WcOpcode::RdmaRead => "RDMA READ",
        WcOpcode::CompSwap => "atomic compare-and-swap",
        WcOpcode::FetchAdd => "atomic fetch-and-add",
        WcOpcode::Recv | WcOpcode::RecvRdmaWithImm => "receive",
        _ => "work request",
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds [`Error::Verb`] from the current `errno`.
    pub(crate) fn last_os(verb: &'static str, context: impl Into<String>) -> Self {
        Self::Verb {
            verb,
            context: context.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Builds [`Error::Verb`] from a returned error number (verbs that return errno directly).
    /// A negative or zero value falls back to the thread's `errno`.
    pub(crate) fn from_ret(verb: &'static str, ret: i32, context: impl Into<String>) -> Self {
        let source = if ret > 0 {
            io::Error::from_raw_os_error(ret)
        } else if ret < 0 && ret != -1 {
            io::Error::from_raw_os_error(-ret)
        } else {
            io::Error::last_os_error()
        };
        Self::Verb {
            verb,
            context: context.into(),
            source,
        }
    }

    /// The work-completion status, when this is a failed completion.
    pub fn completion_status(&self) -> Option<WcStatus> {
        match self {
            Self::Completion { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The errno of a failed verb or I/O call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Verb { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed completion's text names the operation, however the provider filled its opcode.
    #[test]
    fn completion_error_names_the_posted_operation() {
        let e = |opcode| Error::Completion {
            status: WcStatus::RemAccessErr,
            vendor_err: 0,
            opcode,
            qp_num: 0x11,
        };
        let read = e(WcOpcode::RdmaRead).to_string();
        assert_eq!(
            read,
            "RDMA READ failed: RemAccessErr (vendor error 0x0, qp 0x11)"
        );
        assert!(e(WcOpcode::Recv).to_string().starts_with("receive failed"));
        assert!(e(WcOpcode::RecvRdmaWithImm)
            .to_string()
            .starts_with("receive failed"));
        assert!(e(WcOpcode::FetchAdd).to_string().contains("fetch-and-add"));
    }
}
