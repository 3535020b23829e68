//! The CLI's control client: `apphost status|restart|shutdown` send one operation over the
//! running host's control socket (see [`crate::control`]) and print the answer.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::channel::{Op, OpReply, OpResult, Status};
use crate::control::{ControlError, Probe, probe, socket_path};

/// Send `op` to the control socket at `path` and return the answer line as it came (JSON).
/// Blocks until the supervisor answers (a restart answers once the new worker serves or fails).
pub(crate) fn request_raw(path: &Path, op: &Op) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        use std::io::ErrorKind::*;
        match source.kind() {
            NotFound | ConnectionRefused => ControlError::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            _ => ControlError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    let mut line = serde_json::to_string(op).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    if answer.trim().is_empty() {
        return Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            answer: "(nothing: the host closed the connection)".into(),
        });
    }
    Ok(answer.trim_end().to_string())
}

/// Send `op` to the control socket at `path` and wait for the result.
#[cfg(test)]
pub(crate) fn request(path: &Path, op: &Op) -> Result<OpResult, ControlError> {
    let answer = request_raw(path, op)?;
    serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer {
        path: path.to_path_buf(),
        answer,
    })
}

/// Which host a control command talks to, and how it prints (the shared options of
/// `apphost status|restart|shutdown`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Config file of the host (same lookup as `run`); its control socket is used.
    #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The control socket itself (instead of deriving it from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the raw JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// A control command of the CLI.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// `apphost status`.
    Status,
    /// `apphost restart [--exe PATH]`.
    Restart {
        /// The executable for the new workers.
        exe: Option<PathBuf>,
    },
    /// `apphost shutdown [--wait]`.
    Shutdown {
        /// Wait until the host has exited.
        wait: bool,
    },
}

/// Run a control command: exit 0 when it succeeded, 1 when it failed or the host cannot be
/// reached (the reason on stderr), 2 when the config cannot be read.
pub(crate) fn run_command(cmd: Command, target: &Target) -> ExitCode {
    let path = match &target.socket {
        Some(p) => p.clone(),
        None => match crate::config::Config::find(target.config.as_deref()) {
            Ok(c) => socket_path(&c),
            Err(e) => {
                eprintln!("apphost: {e}\n(use --socket PATH to name the control socket directly)");
                return ExitCode::from(2);
            }
        },
    };
    let op = match &cmd {
        Command::Status => Op::Status,
        Command::Shutdown { .. } => Op::Shutdown,
        Command::Restart { exe } => {
            // Relative to where the command runs, not to the supervisor's directory.
            let exe = match exe.as_deref().map(std::path::absolute).transpose() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("apphost: --exe: {e}");
                    return ExitCode::from(2);
                }
            };
            Op::Restart {
                exe: exe.map(|p| p.to_string_lossy().into_owned()),
                via: Some("cli".into()),
            }
        }
    };
    let answer = match request_raw(&path, &op) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("apphost: {e}");
            return ExitCode::from(1);
        }
    };
    let result: OpResult = match serde_json::from_str(&answer) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "apphost: unexpected answer from {}: {answer}",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    if target.json {
        println!("{answer}");
    }
    let code = match &result {
        Ok(reply) => {
            if !target.json {
                println!("{}", describe_reply(reply));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let what = match cmd {
                Command::Status => "status",
                Command::Restart { .. } => "restart",
                Command::Shutdown { .. } => "shutdown",
            };
            eprintln!("apphost: {what} failed: {e}");
            ExitCode::from(1)
        }
    };
    if let (Command::Shutdown { wait: true }, Ok(_)) = (&cmd, &result) {
        // The supervisor removes its socket when it exits.
        while !matches!(probe(&path), Ok(Probe::Absent | Probe::Stale)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !target.json {
            println!("stopped");
        }
    }
    code
}

/// A human summary of an operation's success.
pub(crate) fn describe_reply(reply: &OpReply) -> String {
    match reply {
        OpReply::Restarted(o) => format!(
            "restarted: generation {}, pid {} (was {}), handoff {:.1} ms ({})",
            o.generation,
            o.pid,
            o.old_pid
                .map_or_else(|| "none".to_string(), |p| p.to_string()),
            o.handoff_ms,
            o.mode
        ),
        OpReply::ShuttingDown => {
            "shutting down: every worker drains, then the supervisor exits".into()
        }
        OpReply::Status(s) => describe_status(s),
    }
}

/// A human summary of the supervisor's state, several lines.
pub(crate) fn describe_status(s: &Status) -> String {
    use crate::clock::{human_duration, utc};
    let mut out = format!(
        "apphost: {}\n  supervisor pid {}, up {}\n",
        s.phase,
        s.supervisor_pid,
        human_duration(s.uptime_s)
    );
    match s.worker_pid {
        Some(p) => out.push_str(&format!(
            "  worker pid {p}, generation {} (serving for {})\n",
            s.generation,
            human_duration(s.generation_uptime_s)
        )),
        None => out.push_str("  no worker serving\n"),
    }
    out.push_str(&format!("  executable {}\n  config {}\n", s.exe, s.config));
    out.push_str(&format!(
        "  restart mode {}, {} restarts since start\n  listeners {}\n",
        if s.graceful { "graceful" } else { "full" },
        s.restarts,
        if s.listeners.is_empty() {
            "none".to_string()
        } else {
            s.listeners.join(", ")
        }
    ));
    match &s.last_restart {
        None => out.push_str("  last restart: none"),
        Some(l) => out.push_str(&format!(
            "  last restart: {} (asked by {}, {}): {}",
            if l.ok { "ok" } else { "failed" },
            l.trigger,
            utc(l.at_unix),
            l.detail
        )),
    }
    out
}
