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
//! 3. **Takeover** (`takeover::resume_from_env`, called by `run` before anything else): the new image
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
//! Steps 1 and 2 are here; 3 and 4, the new image's side, are in `takeover`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, Mode, OFlags};
use tokio::sync::mpsc;

use super::Driver;
use crate::config::LogFormat;
use crate::launch::Launch;
use crate::supervisor::events::{Event, Reply};
use crate::supervisor::exe;
use crate::supervisor::handover::{
    self, ControlHandover, ENV_FALLBACK_FD, ENV_STATE_FD, HANDOVER_VERSION, Handover, Waiter,
    WorkerHandover,
};
use crate::supervisor::machine::{self, Phase};
use crate::watch::{FileId, file_id};

/// The program the supervisor runs.
#[derive(Debug)]
pub(crate) struct Image {
    /// The file it was started from (a restart to another file is an upgrade).
    pub(super) file: Option<FileId>,
    /// A descriptor of it, to come back to if a new image cannot take over.
    pub(super) fd: Option<OwnedFd>,
    /// Device and inode of the program the last upgrade preflight ran.
    pub(super) checked_program: Option<(u64, u64)>,
}

/// The running program's device and inode.
pub(super) fn running_program() -> Option<(u64, u64)> {
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

pub(super) fn ms(d: Duration) -> u64 {
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
        // What waits on the workers is answered by this image, with what it knows.
        self.finish_reopens();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
