//! What the client tells the server, and what the server answers: the client's connect
//! request carries the run's parameters in its private data ([`Params`], 20 of the 56 bytes a
//! RoCE/IB connect request can carry), the server's accept carries [`accept_data`] (a refusal
//! carries the reason in text), then each side SENDs the other a [`Hello`]: the buffer the
//! peer may WRITE into and READ from. (Buffers travel after the handshake because memory is
//! registered on the connection's protection domain, known only once connected.)
//!
//! Every integer is big-endian. A run's flows each connect with the same `session` and their
//! own `flow` index; the server starts the session once all `flows` are connected.

use std::fmt;

use tokio_rdma_verbs::{DriverConfig, RemoteBuffer};

use crate::error::Error;

/// The first bytes of every message.
pub const MAGIC: [u8; 4] = *b"RDB1";
/// Wire version.
pub const VERSION: u8 = 1;
/// Bytes of an encoded [`Params`].
pub const PARAMS_LEN: usize = 20;
/// Bytes of [`accept_data`].
pub const ACCEPT_LEN: usize = 8;
/// Bytes of an encoded [`Hello`].
pub const HELLO_LEN: usize = 24;

/// A test (perftest's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum Test {
    /// SEND ping-pong (`ib_send_lat`).
    SendLat,
    /// RDMA WRITE ping-pong (`ib_write_lat`; here WRITE with immediate, so the receiver's
    /// CQ reports each arrival and the dispatch path is measured, not memory polling).
    WriteLat,
    /// RDMA READ, one at a time (`ib_read_lat`).
    ReadLat,
    /// SEND stream (`ib_send_bw`).
    SendBw,
    /// RDMA WRITE stream (`ib_write_bw`).
    WriteBw,
    /// RDMA READ stream (`ib_read_bw`).
    ReadBw,
}

impl Test {
    /// Every test, in wire order.
    pub const ALL: [Test; 6] = [
        Test::SendLat,
        Test::WriteLat,
        Test::ReadLat,
        Test::SendBw,
        Test::WriteBw,
        Test::ReadBw,
    ];

    /// perftest's name (`send_lat`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Test::SendLat => "send_lat",
            Test::WriteLat => "write_lat",
            Test::ReadLat => "read_lat",
            Test::SendBw => "send_bw",
            Test::WriteBw => "write_bw",
            Test::ReadBw => "read_bw",
        }
    }

    /// Whether it reports latency (else bandwidth).
    pub fn is_latency(self) -> bool {
        matches!(self, Test::SendLat | Test::WriteLat | Test::ReadLat)
    }

    /// Whether a sample is a round trip, halved as perftest does (send and write
    /// ping-pongs).
    pub fn rtt_halved(self) -> bool {
        matches!(self, Test::SendLat | Test::WriteLat)
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How completions reach the code that waits for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Raw verbs: post, then spin on `ibv_poll_cq`; no runtime in the loop.
    BusyPoll,
    /// Raw verbs blocking on the completion channel (perftest `-e`).
    Event,
    /// One polling thread runs registered callbacks (core's `CallbackDispatcher`), each
    /// taking its consumer's lock.
    Callback,
    /// tokio-rdma futures on a current-thread runtime.
    Async,
    /// tokio-rdma futures on the multi-thread runtime.
    AsyncMt,
    /// tokio-rdma's event mode: futures on a current-thread runtime whose completion driver
    /// parks on the channel fd at once and whose futures poll the CQ once before they wait
    /// (`DriverConfig { spin_iterations: 0, inline_polls: 1 }`): nothing spins, like
    /// perftest `-e`.
    AsyncEvent,
}

impl Mode {
    /// Every mode, in wire order (the order `compare` runs them).
    pub const ALL: [Mode; 6] = [
        Mode::BusyPoll,
        Mode::Event,
        Mode::Callback,
        Mode::Async,
        Mode::AsyncMt,
        Mode::AsyncEvent,
    ];

    /// The CLI's name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::BusyPoll => "busy-poll",
            Mode::Event => "event",
            Mode::Callback => "callback",
            Mode::Async => "async",
            Mode::AsyncMt => "async-mt",
            Mode::AsyncEvent => "async-event",
        }
    }

    /// Whether it runs on raw verbs (no futures).
    pub fn is_raw(self) -> bool {
        matches!(self, Mode::BusyPoll | Mode::Event | Mode::Callback)
    }

    /// The completion driver's tuning of the async modes: `None` for the default (the
    /// device's shared completion channel), or the event mode's, where nothing spins.
    pub fn driver(self) -> Option<DriverConfig> {
        (self == Mode::AsyncEvent).then(|| DriverConfig {
            spin_iterations: 0,
            inline_polls: 1,
            ..DriverConfig::default()
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One flow's connect request: what to run, and the client's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The test.
    pub test: Test,
    /// The mode, mirrored by the server.
    pub mode: Mode,
    /// Every flow updates one shared structure (`--shared-state`).
    pub shared_state: bool,
    /// Message size in bytes.
    pub size: u32,
    /// Connections in the session.
    pub flows: u16,
    /// This connection's index in the session.
    pub flow: u16,
    /// The session (random per run; all flows of a run carry the same).
    pub session: u32,
}

fn check_magic(what: &'static str, b: &[u8], need: usize) -> Result<(), Error> {
    if b.len() < need {
        return Err(Error::Short {
            what,
            got: b.len(),
            need,
        });
    }
    let magic: [u8; 4] = b[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(Error::Magic { what, magic });
    }
    if b[4] != VERSION {
        return Err(Error::Field {
            what,
            field: "version",
            value: u64::from(b[4]),
        });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Params {
    /// The connect private data.
    pub fn encode(&self) -> [u8; PARAMS_LEN] {
        let mut b = [0u8; PARAMS_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = Test::ALL
            .iter()
            .position(|t| *t == self.test)
            .expect("listed") as u8;
        b[6] = Mode::ALL
            .iter()
            .position(|m| *m == self.mode)
            .expect("listed") as u8;
        b[7] = u8::from(self.shared_state);
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..14].copy_from_slice(&self.flows.to_be_bytes());
        b[14..16].copy_from_slice(&self.flow.to_be_bytes());
        b[16..20].copy_from_slice(&self.session.to_be_bytes());
        b
    }

    /// Parses connect private data (the CM may pad it with zeros).
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        const WHAT: &str = "connect request";
        check_magic(WHAT, b, PARAMS_LEN)?;
        let field = |field, value: u8| Error::Field {
            what: WHAT,
            field,
            value: u64::from(value),
        };
        let test = *Test::ALL
            .get(usize::from(b[5]))
            .ok_or_else(|| field("test", b[5]))?;
        let mode = *Mode::ALL
            .get(usize::from(b[6]))
            .ok_or_else(|| field("mode", b[6]))?;
        if b[7] > 1 {
            return Err(field("flags", b[7]));
        }
        let (flows, flow) = (be16(b, 12), be16(b, 14));
        if flows == 0 || flow >= flows {
            return Err(Error::Field {
                what: WHAT,
                field: "flow index",
                value: u64::from(flow),
            });
        }
        Ok(Self {
            test,
            mode,
            shared_state: b[7] == 1,
            size: be32(b, 8),
            flows,
            flow,
            session: be32(b, 16),
        })
    }
}

/// The server's accept private data: it speaks this protocol.
pub fn accept_data() -> [u8; ACCEPT_LEN] {
    let mut b = [0u8; ACCEPT_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b
}

/// Checks the server's accept private data.
pub fn check_accept(b: &[u8]) -> Result<(), Error> {
    check_magic("accept", b, ACCEPT_LEN)
}

/// The first message on a connection, each way: the sender's buffer (the RDMA WRITE target
/// and READ source of the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's buffer.
    pub buffer: RemoteBuffer,
}

impl Hello {
    /// The message.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[8..24].copy_from_slice(&self.buffer.to_bytes());
        b
    }

    /// Parses the message.
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        check_magic("hello", b, HELLO_LEN)?;
        let buffer = RemoteBuffer::from_bytes(&b[8..24]).map_err(|_| Error::Field {
            what: "hello",
            field: "buffer",
            value: 0,
        })?;
        Ok(Self { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> RemoteBuffer {
        RemoteBuffer {
            addr: 0x1000,
            rkey: 7,
            len: 4096,
        }
    }

    fn params() -> Params {
        Params {
            test: Test::WriteBw,
            mode: Mode::AsyncMt,
            shared_state: true,
            size: 4096,
            flows: 16,
            flow: 3,
            session: 0xdead_beef,
        }
    }

    #[test]
    fn params_round_trip_within_a_connect_request() {
        const { assert!(PARAMS_LEN <= tokio_rdma_cm::MAX_CONNECT_PRIVATE_DATA) };
        let p = params();
        let mut wire = p.encode().to_vec();
        wire.extend_from_slice(&[0; 20]); // the CM pads
        assert_eq!(Params::decode(&wire).unwrap(), p);
        for t in Test::ALL {
            for m in Mode::ALL {
                let q = Params {
                    test: t,
                    mode: m,
                    ..p
                };
                assert_eq!(Params::decode(&q.encode()).unwrap(), q);
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = Params::decode(b"hello").unwrap_err();
        assert!(matches!(e, Error::Short { got: 5, .. }), "{e}");
        let e = Params::decode(&[0x55; 56]).unwrap_err();
        assert!(matches!(e, Error::Magic { .. }), "{e}");
        let mut w = params().encode();
        w[5] = 9;
        assert!(Params::decode(&w)
            .unwrap_err()
            .to_string()
            .contains("test 9"));
        let mut w = params().encode();
        w[14..16].copy_from_slice(&16u16.to_be_bytes());
        assert!(Params::decode(&w).is_err(), "flow index beyond flows");
        let mut w = params().encode();
        w[4] = 2;
        assert!(Params::decode(&w)
            .unwrap_err()
            .to_string()
            .contains("version"));
    }

    #[test]
    fn accept_and_hello_round_trip() {
        const { assert!(ACCEPT_LEN <= tokio_rdma_cm::MAX_ACCEPT_PRIVATE_DATA) };
        check_accept(&accept_data()).unwrap();
        assert!(check_accept(&[0; 8]).is_err());
        let h = Hello { buffer: buffer() };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&[0; 8]).is_err());
    }
}
