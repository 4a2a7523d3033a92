//! Inbox (bounded MPSC + Stream) and EventStream behaviour.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::stream::StreamExt;
use tokio_rdma_core::{inbox, EventSource, EventStream, TrySendError};

#[test]
fn bounded_fifo_with_full_and_capacity_rounding() {
    let (tx, mut rx) = inbox::<u32>(3);
    assert_eq!(tx.capacity(), 4);
    for i in 0..4 {
        tx.try_send(i).unwrap();
    }
    assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
    assert_eq!(rx.len(), 4);
    assert_eq!(rx.try_recv(), Some(0));
    tx.try_send(4).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
    assert_eq!(got, [1, 2, 3, 4]);
    assert!(rx.is_empty());
}

#[test]
fn stream_ends_when_last_sender_drops() {
    let (tx, rx) = inbox::<u32>(8);
    let tx2 = tx.clone();
    tx.try_send(1).unwrap();
    tx2.try_send(2).unwrap();
    drop(tx);
    assert!(!tx2.is_closed(), "one sender left");
    drop(tx2);
    assert_eq!(block_on(rx.collect::<Vec<_>>()), [1, 2]);
}

#[test]
fn close_rejects_new_values_but_drains_queued_ones() {
    let (tx, mut rx) = inbox::<&str>(4);
    tx.try_send("a").unwrap();
    tx.close();
    assert!(matches!(tx.try_send("b"), Err(TrySendError::Closed("b"))));
    assert!(rx.is_closed());
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some("a")));
    assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
}

#[test]
fn dropping_receiver_closes_and_drops_queued_values() {
    let v = std::sync::Arc::new(());
    let (tx, rx) = inbox(4);
    tx.try_send(v.clone()).unwrap();
    drop(rx);
    assert_eq!(
        std::sync::Arc::strong_count(&v),
        2,
        "queued value lives until the inbox goes"
    );
    assert!(matches!(
        tx.try_send(v.clone()),
        Err(TrySendError::Closed(_))
    ));
    drop(tx);
    assert_eq!(std::sync::Arc::strong_count(&v), 1);
}

#[test]
fn receiver_is_woken_across_threads() {
    let (tx, mut rx) = inbox::<u64>(16);
    let producers: Vec<_> = (0..2u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..5_000 {
                    let mut v = t << 32 | i;
                    while let Err(TrySendError::Full(back)) = tx.try_send(v) {
                        v = back;
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut count = 0;
    let mut last = [None; 2];
    block_on(async {
        while let Some(v) = rx.next().await {
            let (t, i) = ((v >> 32) as usize, v & 0xffff_ffff);
            assert!(last[t] < Some(i));
            last[t] = Some(i);
            count += 1;
        }
    });
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(count, 10_000);
}

/// A scripted event source: `Ready` items, `Pending` (with a wake) and errors.
struct Script {
    steps: VecDeque<Poll<Option<Result<u32, &'static str>>>>,
    polls: usize,
}

impl EventSource for Script {
    type Event = u32;
    type Error = &'static str;

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<u32, &'static str>>> {
        self.polls += 1;
        match self.steps.pop_front() {
            Some(Poll::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(ready) => ready,
            None => Poll::Ready(None),
        }
    }

    fn is_fatal(&self, error: &&'static str) -> bool {
        *error == "fatal"
    }
}

#[test]
fn event_stream_yields_errors_and_fuses() {
    let src = Script {
        steps: VecDeque::from([
            Poll::Ready(Some(Ok(1))),
            Poll::Pending,
            Poll::Ready(Some(Err("transient"))),
            Poll::Ready(Some(Ok(2))),
            Poll::Ready(Some(Err("fatal"))),
            Poll::Ready(Some(Ok(3))),
        ]),
        polls: 0,
    };
    let mut s = EventStream::new(src);
    let got = block_on(async {
        let mut got = Vec::new();
        while let Some(e) = s.next_event().await {
            got.push(e);
        }
        got
    });
    assert_eq!(got, [Ok(1), Err("transient"), Ok(2), Err("fatal")]);
    let polls = s.get_ref().polls;
    assert_eq!(block_on(s.next()), None, "fused after a fatal error");
    assert_eq!(s.get_ref().polls, polls, "source not polled again");
    assert!(futures::stream::FusedStream::is_terminated(&s));
    assert_eq!(s.into_inner().steps.len(), 1);
}

#[test]
fn event_stream_ends_with_source() {
    let mut s = EventStream::new(Script {
        steps: VecDeque::from([Poll::Ready(Some(Ok(7)))]),
        polls: 0,
    });
    assert_eq!(block_on(s.next()), Some(Ok(7)));
    assert_eq!(block_on(s.next()), None);
    assert_eq!(block_on(s.next()), None);
    assert_eq!(s.get_mut().polls, 2);
}
