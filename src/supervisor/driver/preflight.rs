//! Preflight runs: `EXE check` of a new executable or config before anything is stopped or
//! started. Two kinds:
//!
//! - for the file watch: `EXE check [-c CONFIG]` must exit 0 (the config is valid for that
//!   executable); the answer goes back to the watcher;
//! - before the supervisor re-executes itself from a new executable: the same `check`, given
//!   the state that would be handed over (a memory file, its descriptor in
//!   `APPHOST_CHECK_STATE_FD`), must exit 0 **and** print `apphost-takeover: ok …`. A build that
//!   does not know the handover (an older apphost, a program that is not apphost) prints no
//!   such line; one that cannot read this state (a version it does not know) says why. The
//!   answer goes to the machine (`UpgradeChecked`).
//!
//! A preflight runs in its own process group (a wrapper script's children are killed with it
//! when it overruns) and is reaped by the supervisor's loop like every child.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitStatus};
use tokio::sync::oneshot;

use super::Driver;
use super::exits::describe_status;
use crate::supervisor::events::{Event, PreflightResult};
use crate::supervisor::handover::{self, TAKEOVER_OK};
use crate::supervisor::machine;

/// Most output kept from a preflight, per stream.
const MAX_OUTPUT: u64 = 16 * 1024;

/// Who waits for a preflight.
pub(super) enum Purpose {
    /// The file watch.
    Watch(oneshot::Sender<PreflightResult>),
    /// An upgrade of the supervisor (the machine); stdout must carry the takeover line.
    Upgrade(Arc<Mutex<String>>),
}

/// A preflight run under way: who waits for it, and its stderr.
pub(super) struct Preflight {
    purpose: Purpose,
    output: Arc<Mutex<String>>,
    timed_out: bool,
    timeout: Duration,
}

fn collect(pipe: Option<OwnedFd>, into: Arc<Mutex<String>>) {
    let Some(fd) = pipe else { return };
    if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let _ = rx.take(MAX_OUTPUT).read_to_end(&mut buf).await;
            *into.lock().unwrap_or_else(|e| e.into_inner()) =
                String::from_utf8_lossy(&buf).into_owned();
        });
    }
}

fn text(s: &Arc<Mutex<String>>) -> String {
    s.lock()
        .unwrap_or_else(|e| e.into_inner())
        .trim()
        .to_string()
}

impl Driver {
    /// Run `EXE check [-c CONFIG]`; the answer goes to `reply` when it exits.
    pub(super) fn start_preflight(&mut self, reply: oneshot::Sender<PreflightResult>) {
        let exe = self.machine.recorded_exe().clone();
        if let Err(e) = self.spawn_preflight(&exe, None, Purpose::Watch(reply)) {
            tracing::debug!("{e}");
        }
    }

    /// Check that `exe` can take over the supervisor: run its `check` with the state that
    /// would be handed over. The machine hears the outcome (`UpgradeChecked`).
    pub(super) fn start_upgrade_check(&mut self, exe: &Path) {
        let state = match self.handover_memfd(None) {
            Ok(fd) => fd,
            Err(why) => {
                return self.feed(machine::Event::UpgradeChecked {
                    result: Err(format!("its state cannot be written: {why}")),
                });
            }
        };
        let stdout = Arc::new(Mutex::new(String::new()));
        if let Err(why) = self.spawn_preflight(exe, Some(state), Purpose::Upgrade(stdout)) {
            self.feed(machine::Event::UpgradeChecked { result: Err(why) });
        }
    }

    fn spawn_preflight(
        &mut self,
        exe: &Path,
        state: Option<OwnedFd>,
        purpose: Purpose,
    ) -> Result<(), String> {
        let mut cmd = self.opts.launch.command(
            exe,
            crate::launch::Role::Check,
            self.opts.config_path.as_deref(),
        );
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env_remove("NOTIFY_SOCKET");
        for v in handover::ALL_ENV {
            cmd.env_remove(v);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let upgrade = matches!(purpose, Purpose::Upgrade(_));
        if let Some(fd) = &state {
            cmd.env(handover::ENV_CHECK_STATE_FD, fd.as_raw_fd().to_string())
                .stdout(std::process::Stdio::piped());
            crate::sys::prepare_child(&mut cmd, vec![fd.as_raw_fd()]);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot run {}: {e}", exe.display());
                if let Purpose::Watch(reply) = purpose {
                    let _ = reply.send(Err(why.clone()));
                }
                return Err(why);
            }
        };
        drop(state);
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().map(Into::into), output.clone());
        if let Purpose::Upgrade(out) = &purpose {
            collect(child.stdout.take().map(Into::into), out.clone());
        }
        let pid = child.id() as i32;
        // Reaped by the supervisor's own loop, like every child.
        drop(child);
        let timeout = if upgrade {
            crate::watch::PREFLIGHT_TIMEOUT.min(self.machine.settings().graceful_timeout)
        } else {
            crate::watch::PREFLIGHT_TIMEOUT
        };
        if let Some(p) = Pid::from_raw(pid) {
            self.after(timeout, Event::PreflightDeadline(p));
        }
        self.preflights.insert(
            pid,
            Preflight {
                purpose,
                output,
                timed_out: false,
                timeout,
            },
        );
        Ok(())
    }

    pub(super) fn preflight_deadline(&mut self, pid: Pid) {
        if let Some(p) = self.preflights.get_mut(&pid.as_raw_nonzero().get()) {
            p.timed_out = true;
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }

    /// A preflight exited with `st`: answer whoever waits.
    pub(super) fn preflight_done(&mut self, p: Preflight, st: WaitStatus) {
        let out = text(&p.output);
        let failed = if p.timed_out {
            Some(format!(
                "preflight `check` did not finish within {} s",
                p.timeout.as_secs_f64()
            ))
        } else if st.exit_status() == Some(0) {
            None
        } else {
            Some(format!(
                "preflight `check` failed ({}): {out}",
                describe_status(st)
            ))
        };
        match p.purpose {
            Purpose::Watch(reply) => {
                let _ = reply.send(failed.map_or(Ok(()), Err));
            }
            Purpose::Upgrade(stdout) => {
                let result = match failed {
                    Some(why) => Err(why),
                    None => match takeover_line(&text(&stdout)) {
                        Some(program) => {
                            self.image.checked_program = program;
                            Ok(())
                        }
                        None => Err("it does not say it can take over a running supervisor \
                                     (an older apphost, or not apphost)"
                            .into()),
                    },
                };
                self.feed(machine::Event::UpgradeChecked { result });
            }
        }
    }
}

/// Find the takeover line in a preflight's stdout: `Some(program)` if it is there, with the
/// device and inode of the program that printed it when given.
fn takeover_line(stdout: &str) -> Option<Option<(u64, u64)>> {
    let line = stdout.lines().find(|l| l.starts_with(TAKEOVER_OK))?;
    let image = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("image="))
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse().ok()?, i.parse().ok()?)));
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_takeover_line_is_found_and_read() {
        assert_eq!(takeover_line("servers:\n  s1\n"), None);
        assert_eq!(
            takeover_line("apphost-takeover: ok version=1 image=2049:1234\n"),
            Some(Some((2049, 1234)))
        );
        assert_eq!(takeover_line("x\napphost-takeover: ok\n"), Some(None));
    }
}
