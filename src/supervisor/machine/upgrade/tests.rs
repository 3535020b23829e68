//! The upgrade's transitions: a restart to another file re-executes the supervisor first; a
//! preflight or `execve` that fails lets the restart go on with this supervisor; a handover
//! restores the machine in the new image; a failed takeover fails the restart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::super::*;
use crate::supervisor::handover::Waiter;

type M = Machine<u32>;

fn settings() -> Settings {
    Settings {
        graceful: true,
        graceful_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(60),
        shutdown_delay: Duration::ZERO,
        warm_standby: false,
    }
}

fn v2() -> PathBuf {
    PathBuf::from("/opt/app/v2")
}

fn reported() -> WorkerSettings {
    crate::supervisor::machine::tests::reported(true, false)
}

/// A serving machine, then a restart to v2 that upgrades the supervisor.
fn upgrading(reply: u32) -> (M, WorkerId, Instant) {
    let t = Instant::now();
    let mut m = M::new("/opt/app/v1".into(), settings(), || 1_700_000_000);
    m.handle(Event::Start { now: t });
    let first = m.phase().current().unwrap_or(1);
    m.handle(Event::Ready {
        worker: 1,
        pid: 100,
        settings: reported(),
        now: t,
    });
    assert_eq!(m.current(), Some(first));
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok(v2()),
        standby_fits: false,
        upgrade: true,
        reply,
        now: t,
    });
    assert!(
        acts.contains(&Action::CheckUpgrade { exe: v2() }),
        "{acts:?}"
    );
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "no worker before the supervisor is upgraded: {acts:?}"
    );
    assert!(matches!(m.phase(), Phase::Upgrading { .. }));
    assert_eq!(m.phase().name(), "restarting");
    (m, 1, t)
}

fn spawns(acts: &[Action<u32>]) -> Vec<(WorkerId, PathBuf)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn {
                worker,
                generation: Some(_),
                exe,
            } => Some((*worker, exe.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_second_restart_during_the_upgrade_is_refused() {
    let (mut m, _, t) = upgrading(7);
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Signal,
        exe: Ok(v2()),
        standby_fits: false,
        upgrade: true,
        reply: 8,
        now: t,
    });
    assert!(matches!(
        &acts[..],
        [Action::Reply { to: 8, result: Err(OpError::Busy(why)) }] if why.contains("upgraded")
    ));
}

#[test]
fn a_refused_preflight_or_exec_lets_the_restart_go_on_with_this_supervisor() {
    for ev in [
        Event::UpgradeChecked {
            result: Err("not apphost".into()),
        },
        Event::ReexecFailed {
            reason: "execve: ENOEXEC".into(),
        },
    ] {
        let (mut m, old, t) = upgrading(7);
        if matches!(ev, Event::ReexecFailed { .. }) {
            let acts = m.handle(Event::UpgradeChecked { result: Ok(()) });
            assert_eq!(acts, [Action::Reexec { exe: v2() }]);
        }
        let acts = m.handle(ev);
        let new = spawns(&acts);
        assert_eq!(new.len(), 1, "{acts:?}");
        assert_eq!(new[0].1, v2());
        let acts = m.handle(Event::Ready {
            worker: new[0].0,
            pid: 200,
            settings: reported(),
            now: t,
        });
        assert!(acts.contains(&Action::Drain {
            worker: old,
            shutdown: false
        }));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Reply { to: 7, result: Ok(OpReply::Restarted(o)) } if o.pid == 200
        )));
        assert_eq!(m.recorded_exe(), &v2());
    }
}

/// The handover: what the old image snapshots is what the new one resumes, and the restart goes
/// on there; a failed takeover (the previous image back) fails it and answers the waiter.
#[test]
fn the_machine_crosses_the_exec_and_the_restart_goes_on() {
    let (mut m, old, t) = upgrading(7);
    assert_eq!(
        m.handle(Event::UpgradeChecked { result: Ok(()) }),
        [Action::Reexec { exe: v2() }]
    );
    let snap = m
        .snapshot(t + Duration::from_millis(3), |r| Waiter::Worker {
            worker: 1,
            id: u64::from(*r),
        })
        .unwrap();
    assert_eq!(snap.pending.waiters, [Waiter::Worker { worker: 1, id: 7 }]);
    assert_eq!(snap.pending.asked_ms_ago, 3);
    assert_eq!(snap.current, old);
    // Through JSON, as across the exec.
    let snap: crate::supervisor::handover::MachineHandover =
        serde_json::from_value(serde_json::to_value(&snap).unwrap()).unwrap();
    for failed in [None, Some("the state cannot be read".to_string())] {
        let later = Instant::now();
        let mut n = M::restore(snap.clone(), vec![9], || 1_700_000_001, later);
        assert_eq!(n.current(), Some(old));
        assert_eq!(n.recorded_exe(), m.recorded_exe());
        let acts = n.handle(Event::Resumed {
            takeover_failed: failed.clone(),
            now: later,
        });
        match failed {
            None => {
                let new = spawns(&acts);
                assert_eq!(new.len(), 1, "{acts:?}");
                assert_eq!(n.generation_of(new[0].0), Some(2));
                let acts = n.handle(Event::Ready {
                    worker: new[0].0,
                    pid: 200,
                    settings: reported(),
                    now: later + Duration::from_millis(2),
                });
                let answered = acts.iter().find_map(|a| match a {
                    Action::Reply {
                        to: 9,
                        result: Ok(OpReply::Restarted(o)),
                    } => Some(o.clone()),
                    _ => None,
                });
                let o = answered.expect("the waiter is answered by the new image");
                assert!(o.handoff_ms >= 5.0, "asked 3 ms before the exec: {o:?}");
                assert_eq!(n.restarts(), 1);
            }
            Some(why) => {
                assert!(spawns(&acts).is_empty());
                assert!(acts.iter().any(|a| matches!(
                    a,
                    Action::Reply { to: 9, result: Err(OpError::Failed(r)) }
                        if r.contains(&why) && r.contains("could not take over")
                )));
                assert!(matches!(n.phase(), Phase::Serving { current } if *current == old));
                assert!(!n.last_restart().unwrap().ok);
            }
        }
    }
}

#[test]
fn a_draining_worker_keeps_its_deadline_across_the_exec() {
    let t = Instant::now();
    let mut m = M::new("/opt/app/v1".into(), settings(), || 0);
    m.handle(Event::Start { now: t });
    m.handle(Event::Ready {
        worker: 1,
        pid: 100,
        settings: reported(),
        now: t,
    });
    // Generation 2 takes over; 1 drains.
    let acts = m.handle(Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok("/opt/app/v1".into()),
        standby_fits: false,
        upgrade: false,
        reply: 1,
        now: t,
    });
    let second = spawns(&acts)[0].0;
    m.handle(Event::Ready {
        worker: second,
        pid: 200,
        settings: reported(),
        now: t,
    });
    m.handle(Event::Restart {
        trigger: Trigger::Cli,
        exe: Ok(v2()),
        standby_fits: false,
        upgrade: true,
        reply: 2,
        now: t,
    });
    let snap = m.snapshot(Instant::now(), |_| Waiter::Log).unwrap();
    assert!(
        snap.workers
            .iter()
            .any(|w| w.id == 1 && w.draining_ms_ago.is_some())
    );
    let later = Instant::now();
    let mut n = M::restore(snap, vec![2], || 0, later);
    let acts = n.handle(Event::Resumed {
        takeover_failed: None,
        now: later,
    });
    let rearmed = acts.iter().find_map(|a| match a {
        Action::Arm {
            after,
            timer: Timer::DrainDeadline(1),
        } => Some(*after),
        _ => None,
    });
    let after = rearmed.expect("the draining worker's deadline is armed again");
    assert!(after <= Duration::from_secs(60) + DRAIN_KILL_MARGIN);
}

#[test]
fn a_stop_during_the_upgrade_answers_the_waiter_and_no_exec_follows() {
    let (mut m, _, _) = upgrading(7);
    let acts = m.handle(Event::StopSignal { name: "SIGTERM" });
    assert!(acts.contains(&Action::Reply {
        to: 7,
        result: Err(OpError::ShuttingDown)
    }));
    assert!(
        m.handle(Event::UpgradeChecked { result: Ok(()) })
            .is_empty()
    );
}

#[test]
fn the_serving_worker_dying_during_the_upgrade_fails_it_and_recovers() {
    let (mut m, old, t) = upgrading(7);
    let acts = m.handle(Event::Exited {
        worker: old,
        status: "killed by signal KILL".into(),
        reason: "killed by signal KILL".into(),
        pid: 100,
        now: t,
    });
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Reply { to: 7, result: Err(OpError::Failed(r)) } if r.contains("being upgraded")
    )));
    assert!(acts.contains(&Action::Arm {
        after: BACKOFF_MIN,
        timer: Timer::Respawn
    }));
    assert!(snapshot_none(&m));
}

fn snapshot_none(m: &M) -> bool {
    m.snapshot(Instant::now(), |_| Waiter::Log).is_none()
}

/// A failed recycle's wait crosses the exec: the new image does not recycle again at once.
#[test]
fn a_failed_recycles_wait_crosses_the_exec() {
    let (mut m, _old, t) = upgrading(7);
    m.recycle_tried_at = Some(t);
    m.recycle_retry = Duration::from_secs(20);
    let snap = m
        .snapshot(t + Duration::from_millis(2500), |r| Waiter::Worker {
            worker: 1,
            id: u64::from(*r),
        })
        .unwrap();
    assert_eq!(snap.recycle_tried_ms_ago, Some(2500));
    assert_eq!(snap.recycle_retry_ms, 20_000);
    let snap: crate::supervisor::handover::MachineHandover =
        serde_json::from_value(serde_json::to_value(&snap).unwrap()).unwrap();
    let later = t + Duration::from_secs(60);
    let n = M::restore(snap, vec![9], || 1_700_000_001, later);
    assert_eq!(n.recycle_retry, Duration::from_secs(20));
    assert_eq!(
        n.recycle_tried_at,
        Some(later - Duration::from_millis(2500))
    );
}
