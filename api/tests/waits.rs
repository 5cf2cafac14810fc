//! Waiting without threads or polling (issue 9, part 6): dials to a service not yet
//! announced, `accept_timeout` and `Watch::next_timeout` are event-driven, with no
//! thread per call.

mod common;

use common::raw::thread_count;
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use std::io::ErrorKind;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests here run one at a time: one counts the process's threads.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn thousands_of_async_dials_wait_for_a_late_service_without_threads() {
    let _g = serial();
    let server = common::node();
    let client = common::node_with(|b| b.dial_timeout(Duration::from_secs(20)));
    let addr = server.listen("127.0.0.1:0").unwrap();
    client.join(&addr.to_string()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const N: usize = 5000;
    let before = thread_count();
    let dials: Vec<_> = (0..N)
        .map(|_| rt.spawn(client.dial_async("late")))
        .collect();
    // Every dial is now waiting inside the node: no thread was started for them.
    std::thread::sleep(Duration::from_millis(300));
    let during = thread_count();
    assert!(
        during <= before + 2,
        "threads grew from {before} to {during} with {N} dials waiting"
    );
    // The service appears: every dial completes, and each stream works.
    let l = server.bind_async("late").unwrap();
    let t = Instant::now();
    rt.block_on(async move {
        let serve = tokio::spawn(async move {
            for _ in 0..N {
                let mut s = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                });
            }
        });
        for d in dials {
            let mut s = tokio::time::timeout(Duration::from_secs(30), d)
                .await
                .expect("dial within 30 s")
                .unwrap()
                .expect("dial succeeds once the service is announced");
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"x");
        }
        serve.await.unwrap();
    });
    eprintln!(
        "{N} waiting dials completed {:?} after the bind",
        t.elapsed()
    );
}

#[test]
fn a_dial_for_a_service_never_announced_fails_at_its_deadline() {
    let _g = serial();
    let node = common::node_with(|b| b.dial_timeout(Duration::from_millis(300)));
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(node.dial_async("nobody")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The blocking dial says the same.
    let e = node.dial("nobody").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn accept_and_watch_timeouts_wake_on_events_and_deadlines() {
    let _g = serial();
    let node = common::node();
    let l = node.bind("svc").unwrap();
    // Deadline with nothing to accept.
    let t = Instant::now();
    let e = l.accept_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    // A stream arriving mid-wait wakes the waiter at once.
    let n2 = node.clone();
    let dialer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        n2.dial("svc").unwrap()
    });
    let t = Instant::now();
    let _s = l.accept_timeout(Duration::from_secs(10)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let _c = dialer.join().unwrap();
    // Watches: the current state first, then nothing until the deadline.
    let w = node.watch_services();
    assert!(matches!(
        w.next_timeout(Duration::from_secs(5)),
        Some(astranet::ServiceEvent::Up(_))
    ));
    let t = Instant::now();
    assert!(w.next_timeout(Duration::from_millis(150)).is_none());
    assert!(t.elapsed() >= Duration::from_millis(140));
    // A bind mid-wait wakes it.
    let n3 = node.clone();
    let binder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        n3.bind("other").unwrap()
    });
    match w.next_timeout(Duration::from_secs(10)) {
        Some(astranet::ServiceEvent::Up(s)) => assert_eq!(s.name, "other"),
        e => panic!("{e:?}"),
    }
    drop(binder.join().unwrap());
}
