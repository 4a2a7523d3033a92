//! rping's protocol as two sans-IO state machines: they judge each message and say which
//! RDMA operation or message comes next; the async shells (`server`, `client`) only execute.
//!
//! One ping, as rping.c orders it:
//!
//! ```text
//! client                                   server
//!   SEND source {addr, rkey, size}  ──►   (recv) RDMA READ size bytes of the source
//!                                   ◄──   SEND go-ahead, once the READ completed
//!   SEND sink {addr, rkey, size}    ──►   (recv) RDMA WRITE strlen + 1 bytes to the sink
//!   (recv) compare source and sink  ◄──   SEND go-ahead, once the WRITE completed
//! ```

use tokio_rdma_verbs::RemoteBuffer;

use super::error::{Error, Result};
use super::pattern::{c_str_len_with_nul, PingPattern};
use super::wire::{RdmaInfo, INFO_LEN};

/// What the server does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// RDMA READ `len` bytes of `from` into the start of our buffer, then call
    /// [`ServerSession::on_read_done`] and send the go-ahead.
    Read {
        /// The client's source.
        from: RemoteBuffer,
        /// Bytes to read (the advertised size).
        len: usize,
    },
    /// RDMA WRITE the first `len` bytes of our buffer to `to`, then call
    /// [`ServerSession::on_write_done`] and send the go-ahead.
    Write {
        /// The client's sink, cut to `len`.
        to: RemoteBuffer,
        /// Bytes to write.
        len: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitSource,
    Reading { len: usize },
    AwaitSink { data_len: usize },
    Writing,
}

/// The server's side of one connection.
#[derive(Clone, Debug)]
pub struct ServerSession {
    capacity: usize,
    state: ServerState,
    pings: u64,
}

impl ServerSession {
    /// A session whose buffer holds `capacity` bytes (`-S`).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: ServerState::AwaitSource,
            pings: 0,
        }
    }

    /// Pings completed.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    /// True while waiting for a ping's source advertisement: a disconnect here is the
    /// normal end of the session.
    pub fn between_pings(&self) -> bool {
        self.state == ServerState::AwaitSource
    }

    /// Judges a received message: the client's source advertisement, then its sink's.
    pub fn on_message(&mut self, msg: &[u8]) -> Result<ServerStep> {
        let info = RdmaInfo::parse(msg)?;
        let remote = info.remote();
        match self.state {
            ServerState::AwaitSource => {
                let len = remote.len as usize;
                if len == 0 {
                    return Err(Error::EmptySource);
                }
                if len > self.capacity {
                    return Err(Error::SourceTooLarge {
                        advertised: remote.len,
                        capacity: self.capacity,
                    });
                }
                self.state = ServerState::Reading { len };
                Ok(ServerStep::Read { from: remote, len })
            }
            ServerState::AwaitSink { data_len } => {
                if (remote.len as usize) < data_len {
                    return Err(Error::SinkTooSmall {
                        advertised: remote.len,
                        needed: data_len,
                    });
                }
                self.state = ServerState::Writing;
                Ok(ServerStep::Write {
                    to: RemoteBuffer {
                        len: data_len as u32,
                        ..remote
                    },
                    len: data_len,
                })
            }
            ServerState::Reading { .. } | ServerState::Writing => Err(Error::OutOfOrder(
                "an advertisement while our RDMA operation is in flight",
            )),
        }
    }

    /// The READ completed; `buf` is our buffer. Returns the bytes that will be echoed: as
    /// rping's `strlen + 1`, but never beyond what was read.
    pub fn on_read_done(&mut self, buf: &[u8]) -> usize {
        let len = match self.state {
            ServerState::Reading { len } => len.min(buf.len()),
            _ => buf.len(),
        };
        let data_len = c_str_len_with_nul(&buf[..len]);
        self.state = ServerState::AwaitSink { data_len };
        data_len
    }

    /// The WRITE completed: the ping is done.
    pub fn on_write_done(&mut self) {
        self.state = ServerState::AwaitSource;
        self.pings += 1;
    }
}

/// What the client does after a go-ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// The server has read the source: advertise the sink.
    AdvertiseSink,
    /// The server has written the sink: check it ([`ClientSession::check`]); the ping is done.
    Check,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    Idle,
    AwaitReadAck,
    AwaitWriteAck,
}

/// The client's side of one connection.
#[derive(Clone, Debug)]
pub struct ClientSession {
    size: usize,
    count: Option<u64>,
    validate: bool,
    pattern: PingPattern,
    state: ClientState,
    ping: u64,
}

impl ClientSession {
    /// `size` bytes per ping, `count` pings (`None`: until the server disconnects),
    /// `validate` the echo (`-V`).
    pub fn new(size: usize, count: Option<u64>, validate: bool) -> Self {
        Self {
            size,
            count,
            validate,
            pattern: PingPattern::new(),
            state: ClientState::Idle,
            ping: 0,
        }
    }

    /// Pings completed.
    pub fn pings(&self) -> u64 {
        self.pattern.next_ping() - u64::from(self.state != ClientState::Idle)
    }

    /// True between pings: a disconnect here is the normal end of the session.
    pub fn between_pings(&self) -> bool {
        self.state == ClientState::Idle
    }

    /// Begins the next ping: fills `source` with its data and returns its number, or `None`
    /// when `count` pings are done.
    pub fn start_ping(&mut self, source: &mut [u8]) -> Option<u64> {
        if self
            .count
            .is_some_and(|count| self.pattern.next_ping() >= count)
        {
            return None;
        }
        self.ping = self.pattern.fill(source);
        self.state = ClientState::AwaitReadAck;
        Some(self.ping)
    }

    /// The advertisement of a buffer of ours (`-S` bytes at `addr` under `rkey`).
    pub fn advert(&self, addr: u64, rkey: u32) -> [u8; INFO_LEN] {
        RdmaInfo::new(addr, rkey, self.size as u32).to_bytes()
    }

    /// Judges a go-ahead from the server: like rping, only its length matters.
    pub fn on_go_ahead(&mut self, msg: &[u8]) -> Result<ClientStep> {
        RdmaInfo::parse(msg)?;
        match self.state {
            ClientState::AwaitReadAck => {
                self.state = ClientState::AwaitWriteAck;
                Ok(ClientStep::AdvertiseSink)
            }
            ClientState::AwaitWriteAck => {
                self.state = ClientState::Idle;
                Ok(ClientStep::Check)
            }
            ClientState::Idle => Err(Error::OutOfOrder("a go-ahead between pings")),
        }
    }

    /// `-V`: the sink must hold exactly the source's bytes (rping compares all `size`).
    pub fn check(&self, source: &[u8], sink: &[u8]) -> Result<()> {
        if !self.validate {
            return Ok(());
        }
        let offset = source
            .iter()
            .zip(sink)
            .position(|(a, b)| a != b)
            .or((source.len() != sink.len()).then_some(source.len().min(sink.len())));
        match offset {
            Some(offset) => Err(Error::DataMismatch {
                ping: self.ping,
                offset,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
