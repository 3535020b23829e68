//! The supervisor: the process `apphost run` starts, whose PID never changes. It owns the
//! listening sockets, starts workers (generations) from the executable, and runs the one restart
//! state machine every trigger goes through.
//!
//! - `machine`: the restart state machine, pure (events in, actions out; its module doc has the
//!   diagram and its unit tests cover each transition);
//! - `driver`: the thin shell that performs the machine's actions (processes, sockets, timers,
//!   replies) and feeds it events; `events` is its one queue's vocabulary;
//! - `generation`: starting one worker process and following its channel and stderr;
//! - `sockets`: the listening sockets it holds (and the Unix socket files it removes);
//! - `control`: the control socket's server; `watchers`: restart when the executable or config
//!   changes; `exe`: checks on an executable; `systemd`: notify and socket activation;
//! - `handover`: the versioned state a supervisor hands to its re-executed image (the driver's
//!   `reexec` does the exec, the takeover and the way back; the machine's `upgrade` its part).
//!
//! Warm standby (`warm_standby`, on by default with `graceful`): right after each restart the
//! supervisor starts the next worker and leaves it waiting on its channel with its runtime up;
//! a graceful restart to the recorded executable then sends it `activate` instead of starting a
//! process (it reads the config at that moment). It is used only while the executable is still
//! the file it was started from, and never for another executable.
//!
//! One operation at a time: a restart asked for while another is under way is refused with
//! `OpError::Busy` (not queued or merged), whatever asked for it.
//!
//! Sockets: the supervisor holds one descriptor per listener key. Each generation inherits all
//! of them; a generation binds the addresses it did not inherit and hands them over (`bound`),
//! and once it is ready the supervisor closes the keys it no longer serves (the draining
//! generation holds its own copies until it stops accepting). No socket is closed or re-bound
//! while its address stays in the config, so no connection is ever refused.
//!
//! The supervisor reaps every child itself (`waitpid(-1)` on SIGCHLD): as PID 1 in a container it
//! also reaps orphans, and it is a child subreaper otherwise. Signals: SIGUSR1 restarts; SIGINT,
//! SIGTERM, SIGQUIT and SIGHUP shut down (every generation drains, then exit 0); a second one
//! during the shutdown kills the workers and exits 1 at once.

mod control;
mod driver;
mod events;
mod exe;
mod generation;
mod handover;
mod machine;
mod sockets;
mod systemd;
mod watchers;

pub(crate) use driver::{Options, check_handover_from_env, resume_from_env, run};
