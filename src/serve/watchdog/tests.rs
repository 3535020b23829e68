//! The watchdog's deadlines, swept at chosen instants or driven by its real timer task.

use super::*;
use limits::{MAX_TICK, MIN_TICK};
use std::task::Poll;

fn limits(header: u64, idle: u64, grace: u64) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        keepalive_grace: Duration::from_millis(grace),
        send_timeout: Duration::from_secs(3600),
        stream_grace: None,
        route_timeout: None,
    }
}

#[test]
fn ticks_follow_the_shortest_timeout_within_bounds() {
    assert_eq!(limits(30_000, 60_000, 1000).tick(), MAX_TICK);
    assert_eq!(
        limits(1000, 60_000, 1000).tick(),
        Duration::from_millis(125)
    );
    assert_eq!(limits(1, 1, 1).tick(), MIN_TICK);
    assert_eq!(
        limits(30_000, 60_000, 200).drain_tick(),
        Duration::from_millis(25)
    );
}

/// Drives a connection future that never ends; returns whether it was killed.
async fn killed_within(state: Arc<ConnState>, reg: Registration, ms: u64) -> bool {
    tokio::time::timeout(
        Duration::from_millis(ms),
        Guard::new(state, reg, std::future::pending()),
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn a_connection_registered_after_the_drained_sweeper_ended_still_has_deadlines() {
    let wd = Watchdog::start(limits(50, 10_000, 50));
    wd.start_drain();
    // Drained and empty: the sweeper ends (and drops its reference).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&wd) > 1 {
        assert!(Instant::now() < deadline, "the sweeper did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A connection the accept loop registers just then: it must still be timed out.
    let (state, reg) = wd.register();
    assert!(
        killed_within(state, reg, 2000).await,
        "no deadline enforced"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_killed_after_the_header_timeout() {
    let wd = Watchdog::start(limits(100, 10_000, 1000));
    // Read before the registration (the accept), so `took` is never shorter than the time
    // the watchdog counts from.
    let start = Instant::now();
    let (state, reg) = wd.register();
    assert!(killed_within(state, reg, 2000).await);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert_eq!(wd.len(), 0);
}

/// `since` and `now` are both truncated to the millisecond: a difference of exactly the
/// timeout may stand for as little as 99.01 ms of 100, so only a larger one kills.
#[tokio::test]
async fn the_header_deadline_is_not_met_by_a_truncated_millisecond() {
    let wd = Watchdog::start(limits(100, 10_000, 1000));
    let (state, _reg) = wd.register();
    let since = state.since_ms.load(Ordering::Acquire);
    wd.sweep(since + 100, 5);
    assert!(
        !state.flag(KILLED),
        "killed with 100 ms counted, maybe 99.01 elapsed"
    );
    wd.sweep(since + 101, 5);
    assert!(state.flag(KILLED));
}

#[tokio::test]
async fn a_busy_connection_is_not_killed_and_idles_out_after_its_response() {
    let wd = Watchdog::start(limits(50, 200, 1000));
    let (state, reg) = wd.register();
    let busy = state.request_started();
    let st = state.clone();
    let task = tokio::spawn(Guard::new(st, reg, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!task.is_finished(), "killed while busy");
    drop(busy);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("idle connection not killed")
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn idle_http2_connections_are_asked_for_goaway_not_killed() {
    let wd = Watchdog::start(limits(50, 100, 50));
    let (state, reg) = wd.register();
    state.mark_h2();
    let busy = state.request_started();
    let st = state.clone();
    // The connection's own task: ends when asked for GOAWAY (as `drive` then does).
    let task = tokio::spawn(Guard::new(
        st.clone(),
        reg,
        std::future::poll_fn(move |_| {
            if st.goaway_requested() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!state.goaway_requested(), "asked while a stream was open");
    drop(busy);
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("not asked for GOAWAY")
        .unwrap();
    assert!(state.goaway_requested());
    assert!(!state.flag(KILLED));
}

/// A draining HTTP/2 connection with no open stream waits for its client's answer to the
/// GOAWAY's PING (h2 then closes it): the HTTP/1 grace does not cut it, only `idle_timeout`
/// from the drain's start or its last response. One that has not made a request yet keeps
/// `header_read_timeout`.
#[tokio::test]
async fn draining_http2_connections_outlive_the_grace_until_idle_timeout() {
    let wd = Watchdog::start(limits(5_000, 2_000, 50));
    let (used, _r1) = wd.register();
    used.mark_h2();
    drop(used.request_started());
    let (fresh, _r2) = wd.register();
    fresh.mark_h2();
    let accepted = fresh.since_ms.load(Ordering::Acquire);
    wd.start_drain();
    let at = wd.drain_at_ms.load(Ordering::Acquire);
    wd.sweep(at + 1_000, 5);
    assert!(!used.flag(KILLED), "cut after the HTTP/1 grace");
    assert!(!fresh.flag(KILLED), "cut before its header_read_timeout");
    wd.sweep(at + 2_005, 5);
    assert!(used.flag(KILLED), "kept past idle_timeout after the drain");
    assert!(!fresh.flag(KILLED));
    wd.sweep(accepted + 5_001, 5);
    assert!(fresh.flag(KILLED), "kept past header_read_timeout");
}

/// An HTTP/2 connection asked for the idle GOAWAY whose client never answers its PING (so h2
/// never closes it) is cut `idle_timeout` later, not held for ever.
#[tokio::test]
async fn an_idle_goaway_that_is_never_answered_is_cut_an_idle_timeout_later() {
    let wd = Watchdog::start(limits(5_000, 1_000, 50));
    let (s, _reg) = wd.register();
    s.mark_h2();
    drop(s.request_started());
    let since = s.since_ms.load(Ordering::Acquire);
    wd.sweep(since + 1_005, 5);
    assert!(s.goaway_requested());
    assert!(!s.flag(KILLED), "cut instead of GOAWAY");
    wd.sweep(since + 1_900, 5);
    assert!(
        !s.flag(KILLED),
        "cut before its client had idle_timeout to answer"
    );
    wd.sweep(since + 2_010, 5);
    assert!(s.flag(KILLED), "held past idle_timeout after the GOAWAY");
}

#[tokio::test]
async fn draining_kills_idle_connections_after_the_grace_and_wakes_every_task() {
    let wd = Watchdog::start(limits(10_000, 10_000, 100));
    let (idle, idle_reg) = wd.register();
    drop(idle.request_started());
    let idle_task = tokio::spawn(Guard::new(idle, idle_reg, std::future::pending()));
    // A task that finishes when woken after the drain started (as an HTTP/2 connection
    // sends GOAWAY).
    let (h2, h2_reg) = wd.register();
    h2.mark_h2();
    let b = h2.request_started();
    let wd2 = wd.clone();
    let h2_task = tokio::spawn(Guard::new(h2, h2_reg, async move {
        std::future::poll_fn(|_| {
            if wd2.is_draining() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }));
    tokio::task::yield_now().await;
    let start = Instant::now();
    wd.start_drain();
    tokio::time::timeout(Duration::from_secs(2), h2_task)
        .await
        .expect("not woken by the drain")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), idle_task)
        .await
        .expect("idle connection kept past the grace")
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100));
    drop(b);
    tokio::time::timeout(Duration::from_secs(2), wd.wait_empty())
        .await
        .expect("registry not empty");
}
