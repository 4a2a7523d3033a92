use super::*;
use crate::rping::pattern::c_str;
use proptest::prelude::*;

const SRC: u64 = 0x1000;
const SINK: u64 = 0x2000;

/// Client and server over simulated memory: READ and WRITE copy between buffers the way the
/// NIC would, by the addresses and lengths the machines chose.
struct Pair {
    client: ClientSession,
    server: ServerSession,
    source: Vec<u8>,
    sink: Vec<u8>,
    server_buf: Vec<u8>,
}

impl Pair {
    fn new(client_size: usize, server_size: usize, count: Option<u64>) -> Self {
        Self {
            client: ClientSession::new(client_size, count, true),
            server: ServerSession::new(server_size),
            source: vec![0; client_size],
            sink: vec![0; client_size],
            server_buf: vec![0; server_size],
        }
    }

    /// One ping; `Ok(None)` when the client's count is done.
    fn ping(&mut self) -> Result<Option<u64>> {
        let Some(n) = self.client.start_ping(&mut self.source) else {
            return Ok(None);
        };
        self.sink.fill(0);
        let ServerStep::Read { from, len } = self.server.on_message(&self.client.advert(SRC, 1))?
        else {
            panic!("server wants no READ");
        };
        assert_eq!((from.addr, from.rkey, len), (SRC, 1, self.source.len()));
        self.server_buf[..len].copy_from_slice(&self.source[..len]);
        let echo = self.server.on_read_done(&self.server_buf);
        assert_eq!(
            self.client.on_go_ahead(&RdmaInfo::GO_AHEAD.to_bytes())?,
            ClientStep::AdvertiseSink
        );
        let ServerStep::Write { to, len } = self.server.on_message(&self.client.advert(SINK, 2))?
        else {
            panic!("server wants no WRITE");
        };
        assert_eq!(
            (to.addr, to.rkey, to.len as usize, len),
            (SINK, 2, echo, echo)
        );
        self.sink[..len].copy_from_slice(&self.server_buf[..len]);
        self.server.on_write_done();
        assert_eq!(self.client.on_go_ahead(&[0; INFO_LEN])?, ClientStep::Check);
        self.client.check(&self.source, &self.sink)?;
        Ok(Some(n))
    }
}

#[test]
fn pings_round_trip_and_stop_at_the_count() {
    let mut p = Pair::new(64, 64, Some(3));
    assert!(p.client.between_pings() && p.server.between_pings());
    for i in 0..3 {
        assert_eq!(p.ping().unwrap(), Some(i));
        assert_eq!(
            c_str(&p.sink),
            c_str(&p.source),
            "ping {i} echoed as printed"
        );
    }
    assert_eq!(p.ping().unwrap(), None);
    assert_eq!((p.client.pings(), p.server.pings()), (3, 3));
    assert!(p.client.between_pings() && p.server.between_pings());
}

#[test]
fn a_server_with_a_bigger_buffer_echoes_only_the_clients_bytes() {
    let mut p = Pair::new(30, 1000, None);
    p.server_buf.fill(b'x');
    for i in 0..100 {
        assert_eq!(p.ping().unwrap(), Some(i));
    }
}

#[test]
fn source_larger_than_our_buffer_is_refused() {
    let mut p = Pair::new(100, 64, None);
    match p.ping() {
        Err(Error::SourceTooLarge {
            advertised: 100,
            capacity: 64,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_source_and_small_sink_are_refused() {
    let mut s = ServerSession::new(64);
    assert!(matches!(
        s.on_message(&RdmaInfo::new(1, 2, 0).to_bytes()),
        Err(Error::EmptySource)
    ));
    assert!(s.between_pings());
    s.on_message(&RdmaInfo::new(1, 2, 64).to_bytes()).unwrap();
    let mut buf = vec![b'a'; 64];
    buf[63] = 0;
    assert_eq!(s.on_read_done(&buf), 64);
    assert!(!s.between_pings());
    match s.on_message(&RdmaInfo::new(3, 4, 63).to_bytes()) {
        Err(Error::SinkTooSmall {
            advertised: 63,
            needed: 64,
        }) => {}
        other => panic!("{other:?}"),
    }
    // A bigger sink is fine: the write is cut to the data.
    assert_eq!(
        s.on_message(&RdmaInfo::new(3, 4, 1000).to_bytes()).unwrap(),
        ServerStep::Write {
            to: RemoteBuffer {
                addr: 3,
                rkey: 4,
                len: 64
            },
            len: 64
        }
    );
}

#[test]
fn echo_stops_at_the_first_nul_and_never_beyond_the_read() {
    let mut s = ServerSession::new(64);
    s.on_message(&RdmaInfo::new(1, 2, 10).to_bytes()).unwrap();
    let mut buf = vec![b'a'; 64];
    // No NUL in the 10 bytes read: all 10 are echoed, not the stale rest.
    assert_eq!(s.on_read_done(&buf), 10);
    s.on_message(&RdmaInfo::new(3, 4, 10).to_bytes()).unwrap();
    s.on_write_done();
    s.on_message(&RdmaInfo::new(1, 2, 64).to_bytes()).unwrap();
    buf[5] = 0;
    assert_eq!(s.on_read_done(&buf), 6);
}

#[test]
fn messages_out_of_turn_are_errors() {
    let mut s = ServerSession::new(64);
    s.on_message(&RdmaInfo::new(1, 2, 64).to_bytes()).unwrap();
    assert!(matches!(
        s.on_message(&RdmaInfo::new(1, 2, 64).to_bytes()),
        Err(Error::OutOfOrder(_))
    ));
    let mut c = ClientSession::new(64, None, true);
    assert!(matches!(c.on_go_ahead(&[0; 16]), Err(Error::OutOfOrder(_))));
    let mut src = vec![0; 64];
    c.start_ping(&mut src);
    assert!(matches!(
        c.on_go_ahead(&[0; 15]),
        Err(Error::BogusMessage { len: 15 })
    ));
}

#[test]
fn validation_finds_the_first_difference() {
    let mut c = ClientSession::new(64, Some(1), true);
    let mut src = vec![0; 64];
    assert_eq!(c.start_ping(&mut src), Some(0));
    let mut sink = src.clone();
    c.check(&src, &sink).unwrap();
    sink[40] ^= 1;
    match c.check(&src, &sink) {
        Err(Error::DataMismatch {
            ping: 0,
            offset: 40,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Without -V nothing is compared.
    ClientSession::new(64, None, false)
        .check(&src, &sink)
        .unwrap();
    assert!(c.check(&src, &src[..10]).is_err());
    assert_eq!(c.start_ping(&mut src), None);
}

proptest! {
    /// Whatever a client sends, in whatever order, the server answers with an error or a
    /// step that stays inside its buffer; it never panics.
    #[test]
    fn server_survives_any_messages(
        msgs in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                (any::<u64>(), any::<u32>(), 0u32..200)
                    .prop_map(|(a, k, s)| RdmaInfo::new(a, k, s).to_bytes().to_vec()),
            ],
            1..20,
        ),
        data in proptest::collection::vec(any::<u8>(), 64),
    ) {
        let mut s = ServerSession::new(64);
        for m in msgs {
            match s.on_message(&m) {
                Ok(ServerStep::Read { len, from }) => {
                    prop_assert!((1..=64).contains(&len) && from.len as usize == len);
                    let echo = s.on_read_done(&data);
                    prop_assert!(echo <= len);
                }
                Ok(ServerStep::Write { len, to }) => {
                    prop_assert!(len <= 64 && to.len as usize == len);
                    s.on_write_done();
                }
                Err(_) => {}
            }
        }
    }
}
