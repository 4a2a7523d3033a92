//! The seed deadlock (Linux ib_cm / ib_mad, 2009), reproduced with real mutexes.
//!
//! Three actors:
//! 1. **poster**: holds the connection lock while posting a MAD, which takes the agent lock;
//! 2. **canceller**: holds the agent lock while waiting synchronously for the timer callback to
//!    finish (`del_timer_sync`);
//! 3. **timer**: its callback delivers the "established" event; with callback dispatch the
//!    event handler runs right there and takes the connection lock.
//!
//! With [`CallbackDispatcher`] the three wait on each other in a cycle: a watchdog detects it,
//! reports the wait-for edges, and makes every lock wait give up so the test exits. With
//! [`Dispatcher`] the timer only stores the event and wakes the connection task, which takes
//! the connection lock later, holding no lock while it awaits: the same workload completes.
//!
//! This is a user-space analogue, not a replay of the kernel's code paths: each actor is a
//! thread, and the timer thread's body delivers the event itself, where in 2009 an interrupt
//! preempted the timer and the event was delivered in that context. What matters is the same:
//! the deliverer runs consumer code (the event handler taking the connection lock) inside a
//! context someone else waits for synchronously.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio_rdma_core::{CallbackDispatcher, Completion, Dispatcher, Routed, WrId};

#[derive(Debug)]
struct Aborted;

/// Shared test context: the two real locks, the timer's state, and the watchdog's view.
#[derive(Default)]
struct World {
    conn: Mutex<Conn>,
    agent: Mutex<Agent>,
    /// Set when the timer callback has returned (what `del_timer_sync` waits for).
    timer_done: AtomicBool,
    /// Set by the watchdog: every wait gives up.
    abort: AtomicBool,
    /// actor -> what it is waiting for right now.
    waiting: Mutex<BTreeMap<&'static str, &'static str>>,
    /// Every wait, in order: (actor, what it waited for).
    waits_log: Mutex<Vec<(&'static str, &'static str)>>,
}

#[derive(Default)]
struct Conn {
    established: bool,
    mads_posted: u32,
}

#[derive(Default)]
struct Agent {
    sent: u32,
    timer_cancelled: bool,
}

impl World {
    fn wait<T>(
        &self,
        who: &'static str,
        what: &'static str,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T, Aborted> {
        self.waiting.lock().unwrap().insert(who, what);
        self.waits_log.lock().unwrap().push((who, what));
        let result = loop {
            if let Some(v) = ready() {
                break Ok(v);
            }
            if self.abort.load(SeqCst) {
                break Err(Aborted);
            }
            thread::sleep(Duration::from_millis(1));
        };
        self.waiting.lock().unwrap().remove(who);
        result
    }

    /// What `who` waited for, in order.
    fn waits_of(&self, who: &str) -> Vec<&'static str> {
        let log = self.waits_log.lock().unwrap();
        log.iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, what)| *what)
            .collect()
    }

    /// `Mutex::lock` that gives up once the watchdog fired (try_lock_for-style loop).
    /// `what` names the lock being waited for.
    fn lock<'a, T>(
        &self,
        m: &'a Mutex<T>,
        who: &'static str,
        what: &'static str,
    ) -> Result<MutexGuard<'a, T>, Aborted> {
        self.wait(who, what, || m.try_lock().ok())
    }
}

/// Actor 1: connection lock held while posting a MAD, which takes the agent lock.
fn poster(w: &World, barrier: &Barrier) -> Result<(), Aborted> {
    let mut conn = w.lock(&w.conn, "poster", "connection lock")?; // uncontended at start
    barrier.wait();
    let mut agent = w.lock(&w.agent, "poster", "agent lock")?;
    agent.sent += 1;
    conn.mads_posted += 1;
    Ok(())
}

/// Actor 2: agent lock held while waiting synchronously for the timer callback to finish.
fn canceller(w: &World, barrier: &Barrier) -> Result<(), Aborted> {
    let mut agent = w.lock(&w.agent, "canceller", "agent lock")?; // uncontended at start
    barrier.wait();
    w.wait("canceller", "timer callback", || {
        w.timer_done.load(SeqCst).then_some(())
    })?;
    agent.timer_cancelled = true;
    Ok(())
}

/// Actor 3: the timer callback, whose body delivers the "established" event (in 2009 an
/// interrupt preempted the timer to deliver it; here the timer thread does it itself).
fn timer(
    w: &World,
    barrier: &Barrier,
    deliver_established: impl FnOnce() -> Result<(), Aborted>,
) -> Result<(), Aborted> {
    barrier.wait();
    deliver_established()?;
    w.timer_done.store(true, SeqCst);
    Ok(())
}

struct Outcome {
    deadlocked: bool,
    /// Wait-for edges seen by the watchdog when it fired.
    waits: BTreeMap<&'static str, &'static str>,
    finished: Vec<&'static str>,
}

fn spawn(
    tx: &Sender<&'static str>,
    name: &'static str,
    f: impl FnOnce() -> Result<(), Aborted> + Send + 'static,
) -> JoinHandle<Result<(), Aborted>> {
    let tx = tx.clone();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = f();
            if r.is_ok() {
                let _ = tx.send(name);
            }
            r
        })
        .unwrap()
}

/// Runs the actors, watches them for `timeout`, then aborts whatever is stuck.
fn watchdog(
    w: &World,
    timeout: Duration,
    threads: Vec<JoinHandle<Result<(), Aborted>>>,
    rx: std::sync::mpsc::Receiver<&'static str>,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut finished = Vec::new();
    let mut deadlocked = false;
    while finished.len() < threads.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(name) => finished.push(name),
            Err(RecvTimeoutError::Timeout) => {
                deadlocked = true;
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let waits = w.waiting.lock().unwrap().clone();
    if deadlocked {
        eprintln!("watchdog: no progress for {timeout:?}; wait-for edges: {waits:?}; aborting");
        w.abort.store(true, SeqCst);
    }
    for t in threads {
        let _ = t.join().expect("actor panicked");
    }
    Outcome {
        deadlocked,
        waits,
        finished,
    }
}

/// The "established" event of the connection.
fn established_event(id: WrId) -> Completion {
    Completion {
        wr_id: id.into_raw(),
        ..Completion::zeroed()
    }
}

type Actor = Box<dyn FnOnce() -> Result<(), Aborted> + Send>;

/// Runs poster, canceller and the timer (whose callback runs `deliver_established`), plus
/// `extra` actors, under the watchdog.
fn run_workload(
    w: &Arc<World>,
    deliver_established: Actor,
    extra: Vec<(&'static str, Actor)>,
    timeout: Duration,
) -> Outcome {
    let barrier = Arc::new(Barrier::new(3));
    let (tx, rx) = channel();
    let mut threads = vec![
        spawn(&tx, "poster", {
            let (w, b) = (w.clone(), barrier.clone());
            move || poster(&w, &b)
        }),
        spawn(&tx, "canceller", {
            let (w, b) = (w.clone(), barrier.clone());
            move || canceller(&w, &b)
        }),
        spawn(&tx, "timer", {
            let (w, b) = (w.clone(), barrier.clone());
            move || timer(&w, &b, deliver_established)
        }),
    ];
    threads.extend(extra.into_iter().map(|(name, f)| spawn(&tx, name, f)));
    watchdog(w, timeout, threads, rx)
}

#[test]
fn callback_dispatch_deadlocks_and_is_detected() {
    let w = Arc::new(World::default());
    let mut cb = CallbackDispatcher::new(4);
    // The connection's event handler, run on the delivering (timer) thread, takes the
    // connection lock — like cm_establish_handler under the MAD timer.
    let w2 = w.clone();
    let handler_result = Arc::new(Mutex::new(None));
    let hr = handler_result.clone();
    let conn_handler = cb.register(move |_c: &Completion| {
        let r = w2
            .lock(&w2.conn, "timer", "connection lock")
            .map(|mut conn| conn.established = true);
        *hr.lock().unwrap() = Some(r.is_ok());
    });
    let established = cb.post(conn_handler).unwrap();

    let deliver: Actor = Box::new(move || {
        assert_eq!(
            cb.handle_completion(established_event(established)),
            Routed::Woken
        );
        // The callback ran inline; it may have given up because of the watchdog.
        match handler_result.lock().unwrap().take() {
            Some(true) => Ok(()),
            _ => Err(Aborted),
        }
    });
    let out = run_workload(&w, deliver, Vec::new(), Duration::from_secs(2));

    assert!(
        out.deadlocked,
        "callback dispatch was expected to deadlock; finished: {:?}",
        out.finished
    );
    assert!(
        out.finished.is_empty(),
        "nobody can finish in the cycle: {:?}",
        out.finished
    );
    // The cycle: poster -> agent lock (canceller) -> timer callback (timer) -> conn (poster).
    assert_eq!(out.waits.get("poster"), Some(&"agent lock"));
    assert_eq!(out.waits.get("canceller"), Some(&"timer callback"));
    assert_eq!(out.waits.get("timer"), Some(&"connection lock"));
    // Every wait, first locks included, is labelled with what it waited for.
    assert_eq!(w.waits_of("poster"), ["connection lock", "agent lock"]);
    assert_eq!(w.waits_of("canceller"), ["agent lock", "timer callback"]);
    assert_eq!(w.waits_of("timer"), ["connection lock"]);
    // After the abort the stuck waits gave up and every thread exited (joined above).
}

#[test]
fn await_dispatch_completes_the_same_workload() {
    let w = Arc::new(World::default());
    let d: Dispatcher = Dispatcher::new(4);
    // The connection task awaits the "established" event, holding no lock while it waits,
    // and takes the connection lock only after the event was handed over.
    let op = d.reserve().unwrap();
    let established: WrId = op.wr_id();

    let d2 = d.clone();
    let deliver: Actor = Box::new(move || {
        // Delivery only stores the event and wakes the task: no consumer lock.
        assert_eq!(
            d2.handle_completion(established_event(established)),
            Routed::Woken
        );
        Ok(())
    });
    let w2 = w.clone();
    let connection_task: Actor = Box::new(move || {
        let event = futures::executor::block_on(op);
        assert_eq!(event.wr_id, established.into_raw());
        let mut conn = w2.lock(&w2.conn, "connection task", "connection lock")?;
        conn.established = true;
        Ok(())
    });
    let out = run_workload(
        &w,
        deliver,
        vec![("connection task", connection_task)],
        Duration::from_secs(20),
    );

    assert!(
        !out.deadlocked,
        "await style must not deadlock; stuck: {:?}",
        out.waits
    );
    assert_eq!(out.finished.len(), 4);
    let conn = w.conn.lock().unwrap();
    assert!(conn.established);
    assert_eq!(conn.mads_posted, 1);
    let agent = w.agent.lock().unwrap();
    assert_eq!((agent.sent, agent.timer_cancelled), (1, true));
    assert_eq!(d.in_flight(), 0);
    // Each actor waited for what its labels say, first lock first.
    assert_eq!(w.waits_of("poster"), ["connection lock", "agent lock"]);
    assert_eq!(w.waits_of("canceller"), ["agent lock", "timer callback"]);
    assert_eq!(w.waits_of("connection task"), ["connection lock"]);
}
