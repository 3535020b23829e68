//! The restart machine's transitions, one test each, without a process: events in, actions
//! checked. `u32` stands for whoever waits for an answer.

use super::standby::STANDBY_PAUSE;
use super::*;

type M = Machine<u32>;

const OLD_PID: u32 = 100;
const NEW_PID: u32 = 200;

fn settings(graceful: bool) -> Settings {
    Settings {
        graceful,
        graceful_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(60),
        shutdown_delay: Duration::ZERO,
        warm_standby: false,
    }
}

pub(super) fn reported(graceful: bool, warm_standby: bool) -> WorkerSettings {
    WorkerSettings {
        graceful,
        graceful_timeout_ms: 10_000,
        shutdown_timeout_ms: 60_000,
        listeners: vec!["127.0.0.1:8080".into()],
        watch_executable: false,
        watch_config: false,
        watch_settle_ms: 300,
        tls_files: Vec::new(),
        warm_standby,
        shutdown_delay_ms: 0,
        recycle: None,
    }
}

pub(super) fn exe() -> PathBuf {
    PathBuf::from("/opt/app/bin/app")
}

/// The worker ids of generations spawned by `acts` (standbys excluded).
pub(super) fn spawned(acts: &[Action<u32>]) -> Vec<WorkerId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn {
                worker,
                generation: Some(_),
                ..
            } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// The standby workers spawned by `acts`.
fn standbys(acts: &[Action<u32>]) -> Vec<WorkerId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn {
                worker,
                generation: None,
                ..
            } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn drains(acts: &[Action<u32>], worker: WorkerId) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::Drain { worker: w, .. } if *w == worker))
}

fn replies(acts: &[Action<u32>]) -> Vec<(u32, OpResult)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Reply { to, result } => Some((*to, result.clone())),
            _ => None,
        })
        .collect()
}

fn restart(to: u32, now: Instant) -> Event<u32> {
    Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok(exe()),
        standby_fits: false,
        upgrade: false,
        reply: to,
        now,
    }
}

fn ready(worker: WorkerId, pid: u32, graceful: bool, warm: bool, now: Instant) -> Event<u32> {
    Event::Ready {
        worker,
        pid,
        settings: reported(graceful, warm),
        now,
    }
}

fn exited(worker: WorkerId, pid: u32, now: Instant) -> Event<u32> {
    Event::Exited {
        worker,
        status: "exit status 2".into(),
        reason: "exit status 2; last output:\nboom".into(),
        pid,
        now,
    }
}

/// A machine whose first generation serves; returns it and that worker.
fn serving(graceful: bool, warm: bool) -> (M, WorkerId, Instant) {
    let t = Instant::now();
    let mut m = M::new(exe(), settings(graceful), || 1_700_000_000);
    let acts = m.handle(Event::Start { now: t });
    let first = spawned(&acts)[0];
    assert!(acts.contains(&Action::Arm {
        after: Duration::from_secs(10),
        timer: Timer::ReadyDeadline(first)
    }));
    assert!(matches!(m.phase(), Phase::Recovering { first: true, .. }));
    let acts = m.handle(ready(first, OLD_PID, graceful, warm, t));
    assert!(acts.contains(&Action::Notify(Notify::FirstReady)));
    assert!(replies(&acts).is_empty(), "the first start answers nobody");
    assert_eq!(m.current(), Some(first));
    assert_eq!(m.restarts(), 0);
    (m, first, t)
}

#[test]
fn ready_new_generation_takes_over() {
    let (mut m, old, t) = serving(true, false);
    let acts = m.handle(restart(7, t));
    let new = spawned(&acts)[0];
    assert_eq!(m.generation_of(new), Some(2));
    assert!(
        matches!(m.phase(), Phase::Starting { current, new: n, .. } if *current == old && *n == new)
    );
    let acts = m.handle(ready(
        new,
        NEW_PID,
        true,
        false,
        t + Duration::from_millis(5),
    ));
    assert!(drains(&acts, old));
    assert!(acts.contains(&Action::KeepListeners(vec!["127.0.0.1:8080".into()])));
    let r = replies(&acts);
    assert_eq!(r.len(), 1);
    match &r[0] {
        (7, Ok(OpReply::Restarted(o))) => {
            assert_eq!(
                (o.generation, o.pid, o.old_pid),
                (2, NEW_PID, Some(OLD_PID))
            );
            assert_eq!(o.mode, "graceful");
            assert!((o.handoff_ms - 5.0).abs() < 0.01, "{}", o.handoff_ms);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.current(), Some(new));
    assert_eq!(m.restarts(), 1);
    let last = m.last_restart().unwrap();
    assert!(last.ok && last.trigger == "cli" && last.at_unix == 1_700_000_000);
}

#[test]
fn a_restart_to_another_executable_records_it() {
    let (mut m, _old, t) = serving(true, false);
    let v2 = PathBuf::from("/opt/app/v2/app");
    let new = spawned(&m.handle(Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok(v2.clone()),
        standby_fits: false,
        upgrade: false,
        reply: 7,
        now: t,
    }))[0];
    assert_eq!(m.recorded_exe(), &exe(), "not before it serves");
    m.handle(ready(new, NEW_PID, true, false, t));
    assert_eq!(m.recorded_exe(), &v2);
    // A crash of the new generation is recovered with v2.
    let acts = m.handle(exited(new, NEW_PID, t));
    assert!(acts.contains(&Action::Arm {
        after: BACKOFF_MIN,
        timer: Timer::Respawn
    }));
    let acts = m.handle(Event::Respawn { now: t });
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Spawn { exe, .. } if *exe == v2))
    );
    // A failed restart to a third executable leaves v2 recorded.
    let (mut m, _old, t) = serving(true, false);
    let new = spawned(&m.handle(Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok(v2.clone()),
        standby_fits: false,
        upgrade: false,
        reply: 7,
        now: t,
    }))[0];
    m.handle(exited(new, NEW_PID, t));
    assert_eq!(m.recorded_exe(), &exe());
}

#[test]
fn exit_before_ready_leaves_the_old_generation_serving() {
    let (mut m, old, t) = serving(true, false);
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(exited(new, NEW_PID, t));
    assert!(!drains(&acts, old));
    match &replies(&acts)[..] {
        [(7, Err(OpError::Failed(why)))] => {
            assert!(
                why.starts_with("exited before it was ready: exit status 2"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.phase(), Phase::Serving { current } if *current == old));
    assert!(!m.last_restart().unwrap().ok);
    // The next restart is accepted.
    assert_eq!(spawned(&m.handle(restart(8, t))).len(), 1);
}

#[test]
fn not_ready_in_time_is_killed_and_reported() {
    let (mut m, old, t) = serving(true, false);
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(Event::ReadyDeadline {
        worker: new,
        tail: "still loading".into(),
    });
    assert!(acts.contains(&Action::Kill {
        worker: new,
        why: KillReason::NotReady
    }));
    assert!(!drains(&acts, old));
    match &replies(&acts)[..] {
        [(7, Err(OpError::Timeout(why)))] => {
            assert!(why.contains("graceful_timeout (10s)"), "{why}");
            assert!(why.contains("still loading"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.phase(), Phase::Serving { current } if *current == old));
    // Its exit afterwards changes nothing.
    let acts = m.handle(exited(new, NEW_PID, t));
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(m.current(), Some(old));
    // A deadline for a worker that is already serving is ignored.
    assert!(
        m.handle(Event::ReadyDeadline {
            worker: old,
            tail: String::new()
        })
        .is_empty()
    );
}

#[test]
fn crash_is_replaced_with_backoff() {
    let (mut m, old, t) = serving(true, false);
    let acts = m.handle(exited(old, OLD_PID, t));
    assert!(acts.contains(&Action::Arm {
        after: BACKOFF_MIN,
        timer: Timer::Respawn
    }));
    assert!(matches!(m.phase(), Phase::Down));
    assert_eq!(m.current(), None);
    let mut expected = BACKOFF_MIN;
    for _ in 0..8 {
        let acts = m.handle(Event::Respawn { now: t });
        let new = spawned(&acts)[0];
        assert!(matches!(m.phase(), Phase::Recovering { first: false, .. }));
        // This one fails too: the delay doubles, up to the cap.
        expected = (expected * 2).min(BACKOFF_MAX);
        let acts = m.handle(exited(new, NEW_PID, t));
        assert!(
            acts.contains(&Action::Arm {
                after: expected,
                timer: Timer::Respawn
            }),
            "{acts:?}"
        );
    }
    assert_eq!(expected, BACKOFF_MAX);
    // A replacement that comes up serves; its ready counts as a restart (mode full).
    let new = spawned(&m.handle(Event::Respawn { now: t }))[0];
    m.handle(ready(new, NEW_PID, true, false, t));
    assert_eq!(m.current(), Some(new));
    assert_eq!(m.last_restart().unwrap().trigger, "recovery");
    // Serving more than a minute resets the backoff.
    let acts = m.handle(exited(new, NEW_PID, t + Duration::from_secs(61)));
    assert!(acts.contains(&Action::Arm {
        after: BACKOFF_MIN,
        timer: Timer::Respawn
    }));
}

#[test]
fn crash_during_a_graceful_restart_lets_the_new_worker_recover() {
    let (mut m, old, t) = serving(true, false);
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(exited(old, OLD_PID, t));
    assert!(spawned(&acts).is_empty());
    assert!(matches!(m.phase(), Phase::Recovering { new: n, .. } if *n == new));
    let acts = m.handle(ready(new, NEW_PID, true, false, t));
    assert!(matches!(&replies(&acts)[..], [(7, Ok(OpReply::Restarted(o)))] if o.mode == "full"));
    assert_eq!(m.current(), Some(new));
}

#[test]
fn second_restart_is_refused() {
    let (mut m, _old, t) = serving(true, false);
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(restart(8, t));
    assert!(spawned(&acts).is_empty());
    assert_eq!(
        replies(&acts),
        vec![(8, Err(OpError::Busy("generation 2 is starting".into())))]
    );
    // Refusing it does not touch the record, nor the restart under way.
    assert!(m.last_restart().is_none());
    assert!(matches!(m.phase(), Phase::Starting { new: n, .. } if *n == new));
    // Nor does a bad executable get past "busy".
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Admin,
        exe: Err("nope".into()),
        standby_fits: false,
        upgrade: false,
        reply: 9,
        now: t,
    });
    assert!(matches!(&replies(&acts)[..], [(9, Err(OpError::Busy(_)))]));
}

#[test]
fn bad_executable_is_refused_and_recorded() {
    let (mut m, old, t) = serving(true, false);
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Admin,
        exe: Err("/x: not a regular file".into()),
        standby_fits: false,
        upgrade: false,
        reply: 7,
        now: t,
    });
    assert_eq!(
        replies(&acts),
        vec![(
            7,
            Err(OpError::BadExecutable("/x: not a regular file".into()))
        )]
    );
    assert!(spawned(&acts).is_empty() && !drains(&acts, old));
    let last = m.last_restart().unwrap();
    assert!(!last.ok && last.trigger == "admin");
}

#[test]
fn full_restart_drains_the_old_generation_first() {
    let (mut m, old, t) = serving(false, false);
    let acts = m.handle(restart(7, t));
    assert!(acts.contains(&Action::Drain {
        worker: old,
        shutdown: false
    }));
    assert!(
        spawned(&acts).is_empty(),
        "nothing starts before the old one is gone"
    );
    assert!(matches!(m.phase(), Phase::Stopping { .. }));
    assert_eq!(
        replies(&m.handle(restart(8, t))),
        vec![(
            8,
            Err(OpError::Busy(
                "generation 1 is draining for a full restart".into()
            ))
        )]
    );
    // The old generation takes 3 s to drain, the new one 700 ms to start: the asker is told
    // the whole 3.7 s and the pid it replaced, not the new worker's start-up alone.
    let acts = m.handle(exited(old, OLD_PID, t + Duration::from_secs(3)));
    let new = spawned(&acts)[0];
    assert!(matches!(m.phase(), Phase::Recovering { first: false, .. }));
    let acts = m.handle(ready(
        new,
        NEW_PID,
        false,
        false,
        t + Duration::from_millis(3700),
    ));
    match &replies(&acts)[..] {
        [(7, Ok(OpReply::Restarted(o)))] => {
            assert_eq!((o.mode.as_str(), o.old_pid), ("full", Some(OLD_PID)));
            assert!((o.handoff_ms - 3700.0).abs() < 0.01, "{}", o.handoff_ms);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.current(), Some(new));
}

#[test]
fn standby_is_activated_instead_of_spawning() {
    let t = Instant::now();
    let mut m = M::new(exe(), settings(true), || 0);
    let first = spawned(&m.handle(Event::Start { now: t }))[0];
    let acts = m.handle(ready(first, OLD_PID, true, true, t));
    let standby = standbys(&acts)[0];
    assert_eq!(m.standby(), Some(standby));
    assert_eq!(
        m.generation_of(standby),
        None,
        "a standby has no generation yet"
    );
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Signal,
        exe: Ok(exe()),
        standby_fits: true,
        upgrade: false,
        reply: 7,
        now: t,
    });
    assert!(spawned(&acts).is_empty() && standbys(&acts).is_empty());
    assert!(acts.contains(&Action::Activate {
        worker: standby,
        generation: 2
    }));
    assert!(!drains(&acts, first));
    let acts = m.handle(ready(standby, NEW_PID, true, true, t));
    assert!(drains(&acts, first));
    assert!(matches!(&replies(&acts)[..], [(7, Ok(OpReply::Restarted(o)))] if o.generation == 2));
    // The next standby is started a moment later, not during the handoff.
    assert!(standbys(&acts).is_empty(), "{acts:?}");
    assert!(acts.contains(&Action::Arm {
        after: STANDBY_PAUSE,
        timer: Timer::Standby
    }));
    let acts = m.handle(Event::StandbyDue);
    let next = standbys(&acts)[0];
    assert_ne!(next, standby);
    // A late timer starts no second one.
    assert!(m.handle(Event::StandbyDue).is_empty());
    // A restart the standby does not fit stops it (killed: it served nothing, and it may not
    // even be an apphost worker that would heed a drain) and spawns a fresh worker.
    let acts = m.handle(restart(8, t));
    assert!(acts.contains(&Action::Kill {
        worker: next,
        why: KillReason::UnusedStandby
    }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::Drain { worker, .. } if *worker == next)),
        "{acts:?}"
    );
    assert_eq!(spawned(&acts).len(), 1);
    assert_eq!(m.standby(), None);
    // The stopped standby's exit is no crash.
    let acts = m.handle(exited(next, 300, t));
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn standby_that_cannot_start_is_dropped() {
    let t = Instant::now();
    let mut m = M::new(exe(), settings(true), || 0);
    let first = spawned(&m.handle(Event::Start { now: t }))[0];
    let standby = standbys(&m.handle(ready(first, OLD_PID, true, true, t)))[0];
    let acts = m.handle(Event::SpawnFailed {
        worker: standby,
        reason: "cannot start".into(),
    });
    assert!(acts.is_empty());
    assert_eq!(m.standby(), None);
    assert_eq!(m.current(), Some(first));
}

#[test]
fn shutdown_during_a_restart_answers_the_asker() {
    let (mut m, old, t) = serving(true, false);
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(Event::StopSignal { name: "SIGTERM" });
    assert_eq!(replies(&acts), vec![(7, Err(OpError::ShuttingDown))]);
    assert!(acts.contains(&Action::Drain {
        worker: old,
        shutdown: true
    }));
    assert!(acts.contains(&Action::Drain {
        worker: new,
        shutdown: true
    }));
    assert!(acts.contains(&Action::Notify(Notify::Stopping)));
    assert!(acts.contains(&Action::Arm {
        after: Duration::from_secs(65),
        timer: Timer::ForceExit
    }));
    assert_eq!(
        replies(&m.handle(restart(8, t))),
        vec![(8, Err(OpError::ShuttingDown))]
    );
    // A late ready report only gets the drain again (already sent: nothing).
    assert!(!drains(&m.handle(ready(new, NEW_PID, true, false, t)), new));
    assert!(!m.handle(exited(old, OLD_PID, t)).contains(&Action::Exit(0)));
    assert_eq!(m.handle(exited(new, NEW_PID, t)), vec![Action::Exit(0)]);
}

#[test]
fn shutdown_request_answers_then_drains() {
    let (mut m, old, _t) = serving(true, false);
    let acts = m.handle(Event::Shutdown { reply: 3 });
    assert_eq!(replies(&acts), vec![(3, Ok(OpReply::ShuttingDown))]);
    assert!(drains(&acts, old));
    // No shutdown_delay: the listening sockets close with the drain.
    assert!(acts.contains(&Action::CloseListeners));
    assert_eq!(m.phase().name(), "shutting_down");
}

#[test]
fn second_stop_signal_exits_at_once() {
    let (mut m, _old, _t) = serving(true, false);
    let acts = m.handle(Event::StopSignal { name: "SIGINT" });
    assert!(!acts.contains(&Action::Exit(1)));
    let acts = m.handle(Event::StopSignal { name: "SIGINT" });
    assert_eq!(acts, vec![Action::KillAll, Action::Exit(1)]);
}

#[test]
fn first_start_failing_ends_the_host() {
    let t = Instant::now();
    let mut m = M::new(exe(), settings(true), || 0);
    let first = spawned(&m.handle(Event::Start { now: t }))[0];
    let acts = m.handle(exited(first, OLD_PID, t));
    assert!(acts.contains(&Action::Exit(1)));
    let mut m = M::new(exe(), settings(true), || 0);
    let first = spawned(&m.handle(Event::Start { now: t }))[0];
    let acts = m.handle(Event::SpawnFailed {
        worker: first,
        reason: "cannot start /opt/app/bin/app: No such file".into(),
    });
    assert_eq!(acts, vec![Action::Exit(1)]);
}

/// Property 3: the old generation is told to drain only after the new one reported ready,
/// whatever else happens in between. Fails if any event before that ready report drains it.
#[test]
fn old_generation_never_drains_before_the_new_one_is_ready() {
    for warm in [false, true] {
        let t = Instant::now();
        let mut m = M::new(exe(), settings(true), || 0);
        let old = spawned(&m.handle(Event::Start { now: t }))[0];
        let standby = standbys(&m.handle(ready(old, OLD_PID, true, warm, t)));
        let acts = m.handle(Event::Restart {
            trigger: Trigger::Watch,
            exe: Ok(exe()),
            standby_fits: warm,
            upgrade: false,
            reply: 1,
            now: t,
        });
        assert!(!drains(&acts, old), "drained at the restart request");
        let new = match m.phase() {
            Phase::Starting { new, .. } => *new,
            other => panic!("{other:?}"),
        };
        assert_eq!(warm, standby == vec![new]);
        // Everything that may happen while the new worker starts, except its ready report.
        let noise: Vec<Event<u32>> = vec![
            restart(2, t),
            Event::ReadyDeadline {
                worker: old,
                tail: String::new(),
            },
            Event::DrainDeadline { worker: new },
            Event::Respawn { now: t },
            Event::SpawnFailed {
                worker: 999,
                reason: String::new(),
            },
            exited(999, 1, t),
            ready(999, 1, true, warm, t),
        ];
        for ev in noise {
            let acts = m.handle(ev);
            assert!(!drains(&acts, old), "drained before ready: {acts:?}");
        }
        let acts = m.handle(ready(new, NEW_PID, true, warm, t));
        let drain_at = acts
            .iter()
            .position(|a| {
                *a == Action::Drain {
                    worker: old,
                    shutdown: false,
                }
            })
            .expect("drained once the new one is ready");
        let reply_at = acts
            .iter()
            .position(|a| matches!(a, Action::Reply { to: 1, .. }))
            .unwrap();
        assert!(
            drain_at < reply_at,
            "the old one stops accepting before the asker hears"
        );
    }
}

#[test]
fn triggers_name_their_source() {
    for via in [
        "signal", "admin", "cli", "watch", "library", "start", "recovery",
    ] {
        assert_eq!(Trigger::from_via(Some(via)).as_str(), via);
    }
    assert_eq!(Trigger::from_via(None), Trigger::Request);
    assert_eq!(
        Trigger::from_via(Some("cron")),
        Trigger::Other("cron".into())
    );
}

/// A machine whose first generation serves with `shutdown_delay: 5s`.
fn serving_with_delay() -> (M, WorkerId, Instant) {
    let t = Instant::now();
    let mut m = M::new(exe(), settings(true), || 0);
    let first = spawned(&m.handle(Event::Start { now: t }))[0];
    let settings = WorkerSettings {
        shutdown_delay_ms: 5_000,
        ..reported(true, false)
    };
    m.handle(Event::Ready {
        worker: first,
        pid: OLD_PID,
        settings,
        now: t,
    });
    (m, first, t)
}

#[test]
fn stop_with_shutdown_delay_goes_away_first_then_drains() {
    let (mut m, old, t) = serving_with_delay();
    let acts = m.handle(Event::StopSignal { name: "SIGTERM" });
    // Nothing stops accepting yet: the worker is told it is going away, and the delay is armed.
    assert!(acts.contains(&Action::GoingAway { worker: old }));
    assert!(!drains(&acts, old));
    assert!(acts.contains(&Action::Arm {
        after: Duration::from_secs(5),
        timer: Timer::ShutdownDelay
    }));
    assert!(acts.contains(&Action::Notify(Notify::Stopping)));
    assert_eq!(m.phase().name(), "going_away");
    assert_eq!(m.current(), Some(old));
    // Restarts are refused while going away.
    assert_eq!(
        replies(&m.handle(restart(4, t))),
        vec![(4, Err(OpError::ShuttingDown))]
    );
    // A shutdown request meanwhile is answered and changes nothing.
    let acts = m.handle(Event::Shutdown { reply: 5 });
    assert_eq!(
        acts,
        vec![Action::Reply {
            to: 5,
            result: Ok(OpReply::ShuttingDown)
        }]
    );
    // The listening sockets stay open while the host is going away: it still serves.
    assert!(!acts.contains(&Action::CloseListeners));
    // The delay over: drain, with shutdown_timeout (and the margin) from now, and close the
    // listening sockets so new connections are refused at once.
    let acts = m.handle(Event::ShutdownDelayOver);
    assert!(acts.contains(&Action::Drain {
        worker: old,
        shutdown: true
    }));
    assert!(acts.contains(&Action::CloseListeners));
    assert!(acts.contains(&Action::Arm {
        after: Duration::from_secs(65),
        timer: Timer::ForceExit
    }));
    assert_eq!(m.phase().name(), "shutting_down");
    // A late timer does nothing.
    assert!(m.handle(Event::ShutdownDelayOver).is_empty());
    assert_eq!(m.handle(exited(old, OLD_PID, t)), vec![Action::Exit(0)]);
}

#[test]
fn second_stop_signal_during_shutdown_delay_exits_at_once() {
    let (mut m, _old, _t) = serving_with_delay();
    m.handle(Event::StopSignal { name: "SIGTERM" });
    let acts = m.handle(Event::StopSignal { name: "SIGTERM" });
    assert_eq!(acts, vec![Action::KillAll, Action::Exit(1)]);
}

#[test]
fn stop_during_a_restart_with_delay_tells_both_workers() {
    let (mut m, old, t) = serving_with_delay();
    let new = spawned(&m.handle(restart(7, t)))[0];
    let acts = m.handle(Event::StopSignal { name: "SIGTERM" });
    assert_eq!(replies(&acts), vec![(7, Err(OpError::ShuttingDown))]);
    assert!(acts.contains(&Action::GoingAway { worker: old }));
    assert!(acts.contains(&Action::GoingAway { worker: new }));
    // The old one exiting during the delay (it crashed) does not end the host while the new
    // one runs; both gone: exit 0.
    assert!(m.handle(exited(old, OLD_PID, t)).is_empty());
    assert_eq!(m.handle(exited(new, NEW_PID, t)), vec![Action::Exit(0)]);
}
