//! The re-executed supervisor's side of an upgrade in place (see `reexec` for the whole
//! sequence): [`resume_from_env`] runs first thing in `run`. It reads the state the previous
//! image wrote ([`Handover`]), checks that every descriptor it names arrived and that this is
//! the program the preflight ran, and resumes the machine with the workers adopted. If it cannot
//! take over, it `fexecve`s the previous program (the kept descriptor) with the same state and
//! `APPHOST_SUPERVISOR_TAKEOVER_FAILED=why`, which resumes and fails the restart.
//! [`check_handover_from_env`] is the preflight's `NEW check --state FILE`: can this program
//! read that state?
//!
//! Fault injection for tests (debug builds only): `APPHOST_TEST_TAKEOVER_FAILS=1` in the new
//! image's environment makes its takeover fail, so the fallback can be tested with a real
//! binary.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::Pid;
use tokio::sync::mpsc;

use super::reexec::{Image, running_program};
use super::{Driver, Options, drive};
use crate::config::{Config, ConfigSource, LogConfig, LogFormat};
use crate::launch::Launch;
use crate::supervisor::events::{Event, Reply};
use crate::supervisor::handover::{
    self, ENV_CHECK_STATE_FD, ENV_FALLBACK_FD, ENV_STATE_FD, ENV_TAKEOVER_FAILED, Handover,
    MAX_HANDOVER, TAKEOVER_OK, Waiter, WorkerHandover,
};
use crate::supervisor::machine::{self, Machine};
use crate::supervisor::sockets::ListenerSet;
use crate::supervisor::{control, generation};
use std::collections::BTreeMap;

/// Debug builds: makes a re-executed image's takeover fail (for the fallback's tests).
const ENV_TEST_TAKEOVER_FAILS: &str = "APPHOST_TEST_TAKEOVER_FAILS";

/// What a re-executed supervisor found in its environment.
struct Arrival {
    state_fd: RawFd,
    fallback_fd: Option<RawFd>,
    /// Set in the previous image, back after a failed takeover: why.
    takeover_failed: Option<String>,
}

fn env_fd(name: &str) -> Option<RawFd> {
    std::env::var(name).ok()?.parse().ok()
}

/// Read and judge the handover at `fd`; the options the supervisor resumes with.
fn read_handover(fd: RawFd) -> Result<(Handover, Options), String> {
    let bytes = crate::sys::pread_all(fd, MAX_HANDOVER)
        .map_err(|e| format!("the supervisor state cannot be read (descriptor {fd}): {e}"))?;
    let h = Handover::decode(&bytes).map_err(|e| e.to_string())?;
    let opts = options(&h)?;
    Ok((h, opts))
}

fn options(h: &Handover) -> Result<Options, String> {
    let mut config = Config::embedded().map_err(|e| e.to_string())?;
    config.source = match &h.config_path {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::Embedded,
    };
    config.log = LogConfig {
        format: if h.log_format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        level: h.log_level.clone(),
    };
    config.control.socket = h.control.as_ref().map(|c| c.path.clone());
    Ok(Options {
        exe: h.machine.recorded_exe.clone(),
        launch: match &h.nested_args {
            None => Launch::Apphost,
            Some(args) => Launch::Nested(args.iter().cloned().map(OsString::from_vec).collect()),
        },
        config_path: h.config_path.clone(),
        config,
    })
}

/// Whether this image may take over with `h`: every descriptor arrived, and (in a new image)
/// it is the program the preflight ran.
fn takeover_check(h: &Handover, arrival: &Arrival) -> Result<(), String> {
    for (what, fd) in h.fds() {
        if !crate::sys::fd_is_open(fd) {
            return Err(format!("{what} (descriptor {fd}) did not arrive"));
        }
    }
    if arrival.takeover_failed.is_some() {
        return Ok(());
    }
    if let (Some(checked), Some(me)) = (h.checked_program, running_program())
        && checked != me
    {
        return Err(format!(
            "this program (device {}, inode {}) is not the one its preflight ran (device {}, \
             inode {})",
            me.0, me.1, checked.0, checked.1
        ));
    }
    if cfg!(debug_assertions) && std::env::var_os(ENV_TEST_TAKEOVER_FAILS).is_some() {
        return Err(format!(
            "{ENV_TEST_TAKEOVER_FAILS} is set (a test's injected failure)"
        ));
    }
    Ok(())
}

/// `apphost run` in a re-executed supervisor: take over with the handover named in the
/// environment (or go back to the previous image). `None` when this is not a re-exec.
pub(crate) fn resume_from_env() -> Option<ExitCode> {
    let state = std::env::var_os(ENV_STATE_FD)?;
    let Some(state_fd) = state.to_str().and_then(|s| s.parse().ok()) else {
        eprintln!(
            "apphost: {ENV_STATE_FD}={}: not a descriptor",
            state.display()
        );
        return Some(ExitCode::from(1));
    };
    let arrival = Arrival {
        state_fd,
        fallback_fd: env_fd(ENV_FALLBACK_FD),
        takeover_failed: std::env::var(ENV_TAKEOVER_FAILED).ok(),
    };
    let verdict = read_handover(arrival.state_fd)
        .and_then(|(h, o)| takeover_check(&h, &arrival).map(|()| (h, o)));
    match verdict {
        Ok((h, opts)) => Some(resume(h, opts, arrival)),
        Err(why) => {
            if arrival.takeover_failed.is_none()
                && let Some(fd) = arrival.fallback_fd
            {
                eprintln!(
                    "apphost: pid[{}]: this executable cannot take over the supervisor: {why}; \
                     going back to the previous one",
                    std::process::id()
                );
                let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
                    .filter(|(k, _)| k != OsStr::new(ENV_TAKEOVER_FAILED))
                    .collect();
                env.push((ENV_TAKEOVER_FAILED.into(), why.clone().into()));
                let argv: Vec<OsString> = std::env::args_os().collect();
                let e = crate::sys::exec_fd(fd, &argv, &env);
                eprintln!("apphost: cannot execute the previous supervisor again: {e}");
            }
            eprintln!("apphost: cannot resume the supervisor: {why}");
            Some(ExitCode::from(1))
        }
    }
}

/// The previous image's waiters, in this one.
fn reply_for(w: Waiter) -> Reply {
    match w {
        Waiter::Log => Reply::Log,
        Waiter::Control { fd } => match crate::sys::adopt_fd(fd) {
            Ok(conn) => Reply::HandedOver(conn),
            Err(_) => Reply::Log,
        },
        Waiter::Worker { worker, id } => Reply::Worker { worker, id },
        Waiter::Watcher { what } => Reply::WatcherHandedOver(what),
    }
}

fn resume(mut h: Handover, opts: Options, arrival: Arrival) -> ExitCode {
    if let Some(w) = crate::logging::init(&opts.config.log) {
        eprintln!("apphost: warning: {w}");
    }
    if let Ok(fd) = crate::sys::adopt_fd(arrival.state_fd) {
        drop(fd);
    }
    let fallback = arrival
        .fallback_fd
        .and_then(|fd| crate::sys::adopt_fd(fd).ok());
    let image = match &arrival.takeover_failed {
        // The previous image again: the descriptor it was executed through is its own.
        Some(why) => {
            tracing::error!(
                "the new executable could not take over the supervisor: {why}; this is the \
                 previous supervisor again (state version {})",
                h.version
            );
            Image {
                file: h.image_before.take(),
                fd: fallback,
                checked_program: None,
            }
        }
        None => {
            tracing::info!(
                state_version = h.version,
                "supervisor re-executed in place; taking over"
            );
            drop(fallback);
            let mut image = Image::running();
            image.file = h.image_after.take().or(image.file);
            image
        }
    };
    let takeover_failed = arrival.takeover_failed;
    drive(move |tx| {
        let now = Instant::now();
        // The "… ago" of the handover are as of its writing, before the exec.
        let written = h
            .written_mono_ns
            .map(|w| Duration::from_nanos(handover::monotonic_ns().saturating_sub(w)))
            .and_then(|gap| now.checked_sub(gap))
            .unwrap_or(now);
        let waiters = std::mem::take(&mut h.machine.pending.waiters)
            .into_iter()
            .map(reply_for)
            .collect();
        let m = Machine::restore(h.machine.clone(), waiters, crate::clock::now_unix, written);
        let mut d = Driver::new(m, opts, tx.clone(), image);
        d.totals = std::mem::take(&mut h.totals);
        d.started = written
            .checked_sub(Duration::from_millis(h.uptime_ms))
            .unwrap_or(written);
        let mut held = BTreeMap::new();
        for (key, fd) in &h.listeners {
            match crate::sys::adopt_fd(*fd) {
                Ok(fd) => {
                    held.insert(key.clone(), fd);
                }
                Err(e) => tracing::error!("listener [{key}] was not handed over: {e}"),
            }
        }
        d.listeners = ListenerSet::restore(
            held,
            h.listener_names.clone(),
            h.listeners_from_systemd.clone(),
        );
        d.standby_file = h.standby_file.clone();
        for w in &h.workers {
            if let Err(e) = adopt_worker(&mut d, w, &tx) {
                tracing::error!(pid = w.pid, "cannot take over worker: {e}");
            }
        }
        if let Some(c) = &h.control {
            let adopted = crate::sys::adopt_fd(c.fd).and_then(|fd| {
                control::ControlServer::adopt(fd, c.path.clone(), (c.dev, c.ino), tx.clone())
            });
            match adopted {
                Ok(c) => d.control = Some(c),
                Err(e) => tracing::error!("cannot serve the control socket on: {e}"),
            }
        }
        Some((
            d,
            machine::Event::Resumed {
                takeover_failed,
                now,
            },
        ))
    })
}

fn adopt_worker(
    d: &mut Driver,
    w: &WorkerHandover,
    tx: &mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let pid = Pid::from_raw(w.pid).ok_or_else(|| std::io::Error::other("pid 0"))?;
    let chan = crate::sys::adopt_fd(w.channel_fd)?;
    let stderr = w.stderr_fd.and_then(|fd| crate::sys::adopt_fd(fd).ok());
    let mut g = generation::adopt(w.id, pid, chan, stderr, w.tail.clone(), tx.clone())?;
    if let Some(reason) = &w.fail_reason {
        d.fail_reasons.insert(w.id, reason.clone());
    }
    if let Some(status) = &w.exited {
        // Reaped by the previous image: judged once its last output is read.
        g.exited = true;
        g.exit_status = Some(status.clone());
        let tasks = std::mem::take(&mut g.tasks);
        let (events, id, status) = (tx.clone(), w.id, status.clone());
        tokio::spawn(async move {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
            let _ = events.send(Event::Reaped(id, status));
        });
    }
    d.workers.insert(w.id, g);
    Ok(())
}

/// `apphost check` given a handover (`APPHOST_CHECK_STATE_FD`, the preflight of an upgrade):
/// read it and say whether this build can take over with it. `None` when not asked.
pub(crate) fn check_handover_from_env() -> Option<ExitCode> {
    let raw = std::env::var(ENV_CHECK_STATE_FD).ok()?;
    let verdict = raw
        .parse::<RawFd>()
        .map_err(|_| format!("{ENV_CHECK_STATE_FD}={raw}: not a descriptor"))
        .and_then(read_handover);
    Some(match verdict {
        Ok((h, _)) => {
            let (dev, ino) = running_program().unwrap_or((0, 0));
            println!("{TAKEOVER_OK} version={} image={dev}:{ino}", h.version);
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("apphost: cannot take over the running supervisor: {why}");
            ExitCode::from(2)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::handover::HANDOVER_VERSION;
    use std::path::PathBuf;

    #[test]
    fn options_come_back_from_a_handover() {
        let h = Handover {
            version: HANDOVER_VERSION,
            nested_args: Some(vec![b"serve".to_vec(), b"run".to_vec()]),
            config_path: Some(PathBuf::from("/etc/app/server.yaml")),
            config_source: "/etc/app/server.yaml".into(),
            log_format: "json".into(),
            log_level: "debug".into(),
            uptime_ms: 1,
            control: None,
            listeners: Default::default(),
            listener_names: Default::default(),
            listeners_from_systemd: Default::default(),
            workers: Vec::new(),
            standby_file: None,
            totals: Default::default(),
            machine: serde_json::from_value(serde_json::json!({
                "current": 1,
                "pending": {"asked_ms_ago": 0, "waiters": [], "trigger": "cli", "exe": "/v2"},
                "graceful": true, "graceful_timeout_ms": 1, "shutdown_timeout_ms": 1,
                "shutdown_delay_ms": 0, "warm_standby": false, "workers": [],
                "next_worker": 2, "next_generation": 2, "recorded_exe": "/v1",
                "backoff_ms": 100, "restarts": 0
            }))
            .unwrap(),
            image_before: None,
            image_after: None,
            checked_program: None,
            written_mono_ns: None,
        };
        let o = options(&h).unwrap();
        assert_eq!(o.exe, PathBuf::from("/v1"));
        assert_eq!(o.launch, Launch::Nested(vec!["serve".into(), "run".into()]));
        assert_eq!(o.config.log.format, LogFormat::Json);
        assert_eq!(o.config.source.to_string(), "/etc/app/server.yaml");
    }
}
