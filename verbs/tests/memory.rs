//! Memory regions and what peers may do to them. Needs an RDMA device (`cargo xtask test`
//! runs these in the soft-RoCE VM).

mod common;

use common::{bounded, pattern, rig};
use tokio_rdma_verbs::{Access, AlignedBuf, Error, LocalBuffer, WcOpcode};

/// A region peers may write cannot be registered as one that derefs to `&[u8]`/`&mut [u8]`:
/// a peer's RDMA WRITE or atomic would race with those references.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_register_refuses_peer_writable_access() {
    let r = rig(16);
    for access in [
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        Access::ALL,
    ] {
        match r.pd.register(vec![0u8; 64], access) {
            Err(Error::InvalidArgument(msg)) => {
                assert!(msg.contains("register_remote"), "{access:?}: {msg}")
            }
            other => panic!("{access:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// Flags are stored; `register_remote` wants remote access; a descriptor exists only for a
/// region peers may access.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_flags_are_stored_and_descriptors_need_remote_access() {
    let r = rig(16);
    let local = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
    assert_eq!(local.access(), Access::LOCAL_WRITE);
    assert!(local.local_write());
    assert!(matches!(local.remote(..), Err(Error::InvalidArgument(_))));

    let readable = r.pd.register(vec![0u8; 64], Access::REMOTE_READ).unwrap();
    assert_eq!(readable.access(), Access::REMOTE_READ);
    assert!(!readable.local_write());
    let d = readable.remote(8..24).unwrap();
    assert_eq!(
        (d.addr, d.rkey, d.len),
        (readable.addr() + 8, readable.rkey(), 16)
    );

    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
    let peer = r.pd.register_remote(vec![0u8; 64], access).unwrap();
    assert_eq!(peer.access(), access);
    assert!(peer.local_write());
    assert_eq!(peer.remote(..).unwrap().len, 64);
    let (addr, lkey) = (peer.addr(), peer.lkey());
    let s = peer.slice(4..8).unwrap();
    assert!(s.local_write());
    assert_eq!(s.sge(), (addr + 4, 4, lkey));

    for bad in [Access::LOCAL_WRITE, Access::REMOTE_WRITE] {
        match r.pd.register_remote(vec![0u8; 64], bad) {
            Err(Error::InvalidArgument(msg)) => eprintln!("{bad:?}: {msg}"),
            other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// A peer's RDMA WRITE lands in a `register_remote` region and is read back by copy; bytes
/// written locally with `write_at` are what a peer's RDMA READ fetches.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_peer_writes_are_read_by_copy() {
    let r = rig(64);
    let (a, b) = r.rc_pair();
    let mut target =
        r.pd.register_remote(
            vec![0u8; 4096],
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
        )
        .unwrap();
    let remote = target.remote(..).unwrap();

    // a writes 1000 bytes at offset 100, then announces it with an immediate (same RC QP,
    // so the data is in place when b's receive completes).
    let src =
        r.pd.register(pattern(1000, 5), Access::LOCAL_WRITE)
            .unwrap();
    let recv = b.recv(());
    let (res, _src) = bounded(
        "write",
        30,
        a.write_with_imm(src, remote.slice(100, 1000).unwrap(), 7),
    )
    .await;
    res.unwrap();
    let (res, ()) = bounded("recv imm", 30, recv).await;
    assert_eq!(res.unwrap().imm_data, Some(7));

    let mut got = vec![0u8; 1000];
    target.read_at(100, &mut got).unwrap();
    assert_eq!(got, pattern(1000, 5));
    let all = target.to_vec();
    assert!(all[..100].iter().chain(&all[1100..]).all(|&x| x == 0));
    // Reads at odd offsets and lengths, and out of range.
    let mut odd = [0u8; 13];
    target.read_at(103, &mut odd).unwrap();
    assert_eq!(&odd[..], &pattern(1000, 5)[3..16]);
    assert!(matches!(
        target.read_at(4090, &mut odd),
        Err(Error::InvalidArgument(_))
    ));

    // write_at, then the peer READs it.
    target.write_at(2001, &pattern(300, 9)).unwrap();
    assert!(matches!(
        target.write_at(4000, &[0u8; 97]),
        Err(Error::InvalidArgument(_))
    ));
    let dst = r.pd.register(vec![0u8; 300], Access::LOCAL_WRITE).unwrap();
    let (res, dst) = bounded("read", 30, a.read(dst, remote.slice(2001, 300).unwrap())).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::RdmaRead);
    assert_eq!(&dst[..], &pattern(300, 9)[..]);

    // The region is a local buffer too: b sends from a slice of it.
    let recv = a.recv(dst);
    let (res, target) = bounded("send", 30, b.send(target.slice(100..200).unwrap())).await;
    res.unwrap();
    let (res, dst) = bounded("recv", 30, recv).await;
    assert_eq!(res.unwrap().byte_len, 100);
    assert_eq!(&dst[..100], &pattern(1000, 5)[..100]);

    // Deregistered, the buffer is handed back with everything that landed.
    let v = target.into_region().into_inner();
    assert_eq!(&v[100..1100], &pattern(1000, 5)[..]);
    assert_eq!(&v[2001..2301], &pattern(300, 9)[..]);
}

/// Remote atomics target a `register_remote` region; its words are read atomically.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_atomics_target_a_remote_region() {
    let r = rig(64);
    let (a, _b) = r.rc_pair();
    let mut words =
        r.pd.register_remote(
            AlignedBuf::new(16, 8).unwrap(),
            Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        )
        .unwrap();
    words.write_at(8, &40u64.to_ne_bytes()).unwrap();
    let word = words.remote(8..16).unwrap();
    let old =
        r.pd.register(AlignedBuf::new(8, 8).unwrap(), Access::LOCAL_WRITE)
            .unwrap();

    let (res, old) = bounded("fetch_add", 30, a.fetch_add(old, word, 5)).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::FetchAdd);
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 40);
    assert_eq!(words.read_u64_at(8).unwrap(), 45);
    let (res, old) = bounded("cas", 30, a.compare_swap(old, word, 45, 7)).await;
    res.unwrap();
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 45);
    assert_eq!(words.read_u64_at(8).unwrap(), 7);
    assert_eq!(
        words.read_u64_at(0).unwrap(),
        0,
        "the other word is untouched"
    );
    assert!(matches!(
        words.read_u64_at(4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        words.read_u64_at(12),
        Err(Error::InvalidArgument(_))
    ));

    // A peer-writable region is also a fine atomic result buffer.
    let result =
        r.pd.register_remote(AlignedBuf::new(8, 8).unwrap(), Access::ALL)
            .unwrap();
    let (res, result) = bounded("fetch_add into remote", 30, a.fetch_add(result, word, 1)).await;
    res.unwrap();
    assert_eq!(result.read_u64_at(0).unwrap(), 7);
    assert_eq!(words.read_u64_at(8).unwrap(), 8);
}

/// A region registered without LOCAL_WRITE says so, and the READ / receive / atomic paths
/// refuse it at the call (instead of an error completion that moves the QP to ERR).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_read_target_without_local_write_is_refused() {
    let r = rig(64);
    let (a, _b) = r.rc_pair();
    let src = r.pd.register(pattern(64, 1), Access::REMOTE_READ).unwrap();
    let dst = r.pd.register(vec![0u8; 64], Access::REMOTE_READ).unwrap();
    assert!(!dst.local_write());
    assert!(!dst.slice(..8).unwrap().local_write());
    let dst = r.pd.register(vec![0u8; 64], Access::REMOTE_READ).unwrap();
    let (res, dst) = bounded("read", 30, a.read(dst, src.remote(..).unwrap())).await;
    match res {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("LOCAL_WRITE"), "{msg}"),
        other => panic!("expected a refusal at the call, got {other:?}"),
    }
    assert!(dst.iter().all(|&x| x == 0));
    // The same for a receive and an atomic result buffer.
    let (res, dst) = bounded("recv", 30, a.recv(dst)).await;
    assert!(matches!(res, Err(Error::InvalidArgument(_))), "{res:?}");
    let word = src.remote(..8).unwrap();
    let (res, _) = bounded(
        "fetch_add",
        30,
        a.fetch_add(dst.slice(..8).unwrap(), word, 1),
    )
    .await;
    assert!(matches!(res, Err(Error::InvalidArgument(_))), "{res:?}");
}
