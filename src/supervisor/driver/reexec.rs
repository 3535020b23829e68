//! The supervisor re-executing itself in place: when a restart's executable is not the file the
//! supervisor runs (the watched file was replaced, `restart --exe OTHER`, the admin's
//! `newExeFilePath`) and is an ELF binary, the supervisor `execve`s into it (same PID: systemd,
//! Docker and the terminal see nothing) before the worker handoff, which the new code then
//! performs.
//!
//! 1. **Preflight** (`super::preflight`): `NEW check` reads the state about to be handed over
//!    and says it can take over. If not, the restart goes on with this supervisor.
//! 2. **Exec** ([`Driver::reexec`]): the events already queued are handled, the state
//!    ([`Handover`]) is written to a memory file, close-on-exec is cleared on every descriptor it
//!    names, on the memory file and on a descriptor of the running program ([`Image`]), the
//!    supervisor's signals are blocked (so one that arrives meanwhile waits for the new
//!    handlers), and `execve(NEW, same argv, env + APPHOST_SUPERVISOR_STATE_FD/FALLBACK_FD)`.
//!    Workers are children of the PID, not of the image: they serve on, and their channels
//!    buffer what they send. If `execve` fails, nothing was lost: flags are restored and the
//!    restart goes on with this supervisor.
//! 3. **Takeover** ([`resume_from_env`], called by `run` before anything else): the new image
//!    reads the state, checks that every descriptor arrived and that it is the program the
//!    preflight ran, and resumes the machine (`Resumed`): the restart goes on.
//! 4. **Fallback**: if the new image cannot take over (the state unreadable, a descriptor
//!    missing, another program than the one checked), it `fexecve`s the previous program through
//!    the kept descriptor with the same state and `APPHOST_SUPERVISOR_TAKEOVER_FAILED=why`; the
//!    previous code resumes and fails the restart, telling the asker why.
//!
//! What cannot be caught: a new image that passed its preflight and then dies before reaching
//! apphost's code (the program's own `main` crashing first). The PID is gone then; the workers
//! get SIGTERM (their parent-death signal) and drain, and systemd or the container runtime
//! restarts the service. README's Limits say so.
//!
//! Fault injection for tests (debug builds only): `APPHOST_TEST_TAKEOVER_FAILS=1` in the new
//! image's environment makes its takeover fail, so the fallback can be tested with a real
//! binary.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::process::Pid;
use tokio::sync::mpsc;

use super::{Driver, Options, drive};
use crate::config::{Config, ConfigSource, LogConfig, LogFormat};
use crate::launch::Launch;
use crate::supervisor::events::{Event, Reply};
use crate::supervisor::handover::{
    self, ControlHandover, ENV_CHECK_STATE_FD, ENV_FALLBACK_FD, ENV_STATE_FD, ENV_TAKEOVER_FAILED,
    HANDOVER_VERSION, Handover, MAX_HANDOVER, TAKEOVER_OK, Waiter, WorkerHandover,
};
use crate::supervisor::machine::{self, Machine, Phase};
use crate::supervisor::sockets::ListenerSet;
use crate::supervisor::{control, exe, generation};
use crate::watch::{FileId, file_id};
use std::collections::BTreeMap;

/// Debug builds: makes a re-executed image's takeover fail (for the fallback's tests).
const ENV_TEST_TAKEOVER_FAILS: &str = "APPHOST_TEST_TAKEOVER_FAILS";

/// The program the supervisor runs.
#[derive(Debug)]
pub(crate) struct Image {
    /// The file it was started from (a restart to another file is an upgrade).
    file: Option<FileId>,
    /// A descriptor of it, to come back to if a new image cannot take over.
    fd: Option<OwnedFd>,
    /// Device and inode of the program the last upgrade preflight ran.
    pub(super) checked_program: Option<(u64, u64)>,
}

/// The running program's device and inode.
fn running_program() -> Option<(u64, u64)> {
    file_id(Path::new("/proc/self/exe")).map(|f| f.dev_ino())
}

impl Image {
    /// The program this process runs.
    pub(super) fn running() -> Image {
        let fd = rustix::fs::open(
            "/proc/self/exe",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        if let Err(e) = &fd {
            tracing::warn!(
                "cannot open my own program ({e}): the supervisor will not upgrade itself"
            );
        }
        Image {
            file: file_id(Path::new("/proc/self/exe")),
            fd: fd.ok(),
            checked_program: None,
        }
    }

    /// Whether a restart to `exe` upgrades the supervisor: another file than the one it runs,
    /// and an ELF binary.
    pub(super) fn differs_from(&self, exe: &Path) -> bool {
        self.fd.is_some()
            && self.file.is_some()
            && file_id(exe).is_some_and(|f| Some(f) != self.file)
            && exe::is_elf(exe)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn waiter(r: &Reply) -> Waiter {
    match r {
        // A task of this image dies with it; the outcome is logged.
        Reply::Log | Reply::Local(_) => Waiter::Log,
        Reply::Client { conn, .. } | Reply::HandedOver(conn) => Waiter::Control {
            fd: conn.as_raw_fd(),
        },
        Reply::Worker { worker, id } => Waiter::Worker {
            worker: *worker,
            id: *id,
        },
        Reply::Watcher { what, .. } => Waiter::Watcher {
            what: what.to_string(),
        },
        Reply::WatcherHandedOver(what) => Waiter::Watcher { what: what.clone() },
    }
}

impl Driver {
    /// The state to hand over now (an upgrade must be under way).
    fn handover(&self, image_after: Option<FileId>) -> Result<Handover, String> {
        let now = Instant::now();
        let machine = self
            .machine
            .snapshot(now, waiter)
            .ok_or("no upgrade is under way")?;
        let control = self.control.as_ref().map(|c| {
            let (fd, path, (dev, ino)) = c.handover();
            ControlHandover {
                fd: fd.as_raw_fd(),
                path: path.to_path_buf(),
                dev,
                ino,
            }
        });
        let workers = self
            .workers
            .iter()
            .map(|(id, g)| WorkerHandover {
                id: *id,
                pid: g.pid.as_raw_nonzero().get(),
                channel_fd: g.chan.as_fd().as_raw_fd(),
                stderr_fd: g.stderr_fd.as_ref().map(|f| f.as_raw_fd()),
                tail: g.tail_lines(),
                exited: g.exit_status.clone(),
                fail_reason: self.fail_reasons.get(id).cloned(),
            })
            .collect();
        Ok(Handover {
            version: HANDOVER_VERSION,
            nested_args: match &self.opts.launch {
                Launch::Apphost => None,
                Launch::Nested(args) => Some(args.iter().map(|a| a.as_bytes().to_vec()).collect()),
            },
            config_path: self.opts.config_path.clone(),
            config_source: self.opts.config.source.to_string(),
            log_format: match self.opts.config.log.format {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            },
            log_level: self.opts.config.log.level.clone(),
            uptime_ms: ms(self.started.elapsed()),
            control,
            listeners: self.listeners.raw_fds(),
            listener_names: self.listeners.names().clone(),
            listeners_from_systemd: self.listeners.systemd_keys().clone(),
            workers,
            standby_file: self.standby_file.clone(),
            machine,
            image_before: self.image.file.clone(),
            image_after,
            checked_program: self.image.checked_program,
            written_mono_ns: Some(handover::monotonic_ns()),
            totals: self.totals.clone(),
        })
    }

    /// The handover in a memory file (close-on-exec; the caller passes it on).
    pub(super) fn handover_memfd(&self, image_after: Option<FileId>) -> Result<OwnedFd, String> {
        let bytes = self
            .handover(image_after)?
            .encode()
            .map_err(|e| e.to_string())?;
        let fd = rustix::fs::memfd_create("apphost-handover", MemfdFlags::CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
        let mut off = 0;
        while off < bytes.len() {
            match rustix::io::write(&fd, &bytes[off..]) {
                Ok(n) => off += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("writing the state: {e}")),
            }
        }
        Ok(fd)
    }

    /// Before the exec: handle what is already queued (a child reaped, a worker's message: the
    /// next image could not know of it), and let the tasks run a turn, so that answers already
    /// decided (a control client's `status`, a refusal) are written before their connections
    /// close with this image. Two rounds: an answer written in the first may let a task queue
    /// one more event.
    pub(super) async fn settle_before_exec(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) {
        for _ in 0..2 {
            while let Ok(ev) = rx.try_recv() {
                self.handle(ev);
            }
            tokio::task::yield_now().await;
        }
        while let Ok(ev) = rx.try_recv() {
            self.handle(ev);
        }
    }

    /// Re-execute the supervisor from `exe` (the machine asked for it). Returns only if that
    /// could not be done; the machine has then heard why and goes on with this image.
    pub(super) fn reexec(&mut self, exe: &Path) {
        if !matches!(self.machine.phase(), Phase::Upgrading { .. }) {
            // A shutdown or a worker's death overtook the upgrade.
            return;
        }
        let failed = match self.try_exec(exe) {
            Ok(never) => match never {},
            Err(why) => why,
        };
        tracing::warn!(
            "cannot re-execute the supervisor from {}: {failed}",
            exe.display()
        );
        self.feed(machine::Event::ReexecFailed { reason: failed });
    }

    fn try_exec(&mut self, exe: &Path) -> Result<std::convert::Infallible, String> {
        let fallback = self
            .image
            .fd
            .as_ref()
            .ok_or("no descriptor of the running program to come back to")?
            .as_raw_fd();
        let after = file_id(exe).ok_or("it is gone")?;
        if let Some(checked) = self.image.checked_program
            && after.dev_ino() != checked
        {
            return Err("it was replaced after its preflight".into());
        }
        let state = self.handover_memfd(Some(after))?;
        let h = self.handover(None)?;
        let mut fds: Vec<RawFd> = h.fds().into_iter().map(|(_, fd)| fd).collect();
        fds.push(state.as_raw_fd());
        fds.push(fallback);
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_bytes();
                !handover::ALL_ENV.iter().any(|v| v.as_bytes() == k)
                    && !matches!(k, b"LISTEN_FDS" | b"LISTEN_PID" | b"LISTEN_FDNAMES")
            })
            .collect();
        env.push((ENV_STATE_FD.into(), state.as_raw_fd().to_string().into()));
        env.push((ENV_FALLBACK_FD.into(), fallback.to_string().into()));
        let argv: Vec<OsString> = std::env::args_os().collect();
        tracing::info!(
            exe = %exe.display(),
            descriptors = fds.len(),
            "re-executing the supervisor from the new executable (same pid)"
        );
        let result = (|| {
            for &fd in &fds {
                crate::sys::set_cloexec(fd, false)
                    .map_err(|e| format!("cannot pass descriptor {fd} on: {e}"))?;
            }
            crate::sys::block_stop_signals().map_err(|e| format!("cannot hold signals: {e}"))?;
            Err(format!("execve: {}", crate::sys::exec(exe, &argv, &env)))
        })();
        // Still here: nothing happened; this image goes on.
        let _ = crate::sys::unblock_stop_signals();
        for &fd in &fds {
            let _ = crate::sys::set_cloexec(fd, true);
        }
        result
    }
}

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
    use std::path::PathBuf;

    #[test]
    fn a_restart_to_the_running_program_is_no_upgrade_and_a_script_is_never_one() {
        let me = std::env::current_exe().unwrap();
        let image = Image::running();
        assert!(!image.differs_from(&me));
        let d = tempfile::tempdir().unwrap();
        let copy = d.path().join("copy");
        std::fs::copy(&me, &copy).unwrap();
        assert!(image.differs_from(&copy));
        let script = d.path().join("script");
        std::fs::write(&script, "#!/bin/sh\nexec true\n").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&script, mode).unwrap();
        assert!(!image.differs_from(&script));
        assert!(!image.differs_from(&d.path().join("missing")));
    }

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
