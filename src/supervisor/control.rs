//! The supervisor's end of the control socket (see [`crate::control`] for where it is and the
//! protocol): it accepts one request per connection, hands it to the supervisor's state
//! machine as an operation, exactly like a signal or the admin page, and writes the answer back.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::events::{Event, Reply};
use crate::channel::{Op, OpError, OpResult};
use crate::config::Config;
use crate::control::{
    ControlError, Probe, effective_uid, prepare_dir, probe, socket_path, unusable,
};

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At exit, how long answers still being written may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ControlServer {
    path: PathBuf,
    /// (device, inode) of the socket file created.
    id: (u64, u64),
    accept: tokio::task::JoinHandle<()>,
    tasks: TaskTracker,
    /// A second descriptor of the listening socket, for a re-executed supervisor.
    listener_fd: OwnedFd,
}

impl ControlServer {
    /// Create the control socket for `config` and serve it: each request becomes
    /// `Event::Op(op, Reply::Local(_))` on `events`, and its answer is written back. Must be
    /// called inside the supervisor's runtime. On failure, logs why and returns `None`: the host
    /// runs on without a control socket.
    pub(crate) fn start(
        config: &Config,
        events: mpsc::UnboundedSender<Event>,
    ) -> Option<ControlServer> {
        let path = socket_path(config);
        let derived = config.control.socket.is_none();
        match bind(&path, derived) {
            Ok((listener, id)) => {
                tracing::info!("control socket at {}", path.display());
                Self::serve(listener, path, id, events).ok()
            }
            Err(e) => {
                tracing::warn!(
                    "no control socket: {e}; `apphost status|restart|shutdown` cannot reach \
                     this host"
                );
                None
            }
        }
    }

    /// Serve a control socket a previous supervisor image bound (a re-executed supervisor):
    /// `fd` listens on `path`, whose file is `id` (device, inode).
    pub(crate) fn adopt(
        fd: OwnedFd,
        path: PathBuf,
        id: (u64, u64),
        events: mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<ControlServer> {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        let l = tokio::net::UnixListener::from_std(l)?;
        Self::serve(l, path, id, events)
    }

    fn serve(
        listener: tokio::net::UnixListener,
        path: PathBuf,
        id: (u64, u64),
        events: mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<ControlServer> {
        let listener_fd = listener.as_fd().try_clone_to_owned()?;
        let tasks = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(listener, events, tasks.clone()));
        Ok(ControlServer {
            path,
            id,
            accept,
            tasks,
            listener_fd,
        })
    }

    /// What a re-executed supervisor needs to serve this socket on: its listening descriptor,
    /// its path and the file's identity.
    pub(crate) fn handover(&self) -> (std::os::fd::BorrowedFd<'_>, &Path, (u64, u64)) {
        (self.listener_fd.as_fd(), &self.path, self.id)
    }

    /// The socket's path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, give answers being written a moment to go out, remove the socket file.
    pub(crate) async fn close(self) {
        self.accept.abort();
        self.tasks.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.tasks.wait()).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bind(
    path: &Path,
    derived: bool,
) -> Result<(tokio::net::UnixListener, (u64, u64)), ControlError> {
    if path.as_os_str().len() >= 108 {
        return Err(unusable(
            path,
            "path too long for a Unix socket (108 bytes at most); set control.socket",
        ));
    }
    if let Some(dir) = path.parent() {
        prepare_dir(dir, derived)?;
    }
    match probe(path)? {
        Probe::Alive => return Err(ControlError::InUse(path.to_path_buf())),
        Probe::Stale => {
            tracing::info!("removing the stale control socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| unusable(path, e.to_string()))?;
        }
        Probe::Absent => {}
    }
    // Created 0600 from the start: no moment where others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let l = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let m = std::fs::symlink_metadata(path).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    let l = tokio::net::UnixListener::from_std(l).map_err(io)?;
    Ok((l, (m.dev(), m.ino())))
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    events: mpsc::UnboundedSender<Event>,
    tasks: TaskTracker,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tasks.spawn(serve_conn(stream, events.clone()));
            }
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(stream: tokio::net::UnixStream, events: mpsc::UnboundedSender<Event>) {
    let cred = stream.peer_cred().ok();
    if let Some(c) = &cred
        && c.uid() != effective_uid()
        && c.uid() != 0
    {
        tracing::warn!(
            uid = c.uid(),
            "control socket: connection from another user refused"
        );
        return;
    }
    let peer = cred
        .and_then(|c| c.pid())
        .map_or_else(|| "?".to_string(), |p| p.to_string());
    // The connection again, for a supervisor that re-executes itself before it answers.
    let conn = stream.as_fd().try_clone_to_owned().ok();
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(r.take(MAX_LINE));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return,
        Ok(Ok(_)) => match serde_json::from_str::<Op>(line.trim()) {
            Ok(op) => {
                let r = ask(op, &events, &peer, conn).await;
                serde_json::to_string(&r).unwrap_or_else(|e| bad_request(&e.to_string()))
            }
            Err(e) => bad_request(&format!("not an operation: {e}")),
        },
        Ok(Err(e)) => bad_request(&e.to_string()),
    };
    let _ = w.write_all(answer.as_bytes()).await;
    let _ = w.write_all(b"\n").await;
    let _ = w.shutdown().await;
}

fn bad_request(reason: &str) -> String {
    serde_json::json!({ "Err": { "error": "bad_request", "reason": reason } }).to_string()
}

/// Write `r` to a control client whose request a previous supervisor image received (a
/// re-executed supervisor answers on the connection it was handed).
pub(crate) fn answer_handed_over(conn: OwnedFd, r: OpResult) {
    tokio::spawn(async move {
        let s = std::os::unix::net::UnixStream::from(conn);
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(mut s) = tokio::net::UnixStream::from_std(s) else {
            return;
        };
        let answer = serde_json::to_string(&r).unwrap_or_else(|e| bad_request(&e.to_string()));
        let write = async {
            s.write_all(answer.as_bytes()).await?;
            s.write_all(b"\n").await?;
            s.shutdown().await
        };
        if tokio::time::timeout(READ_TIMEOUT, write).await.is_err() {
            tracing::debug!("control socket: a client did not take its answer");
        }
    });
}

/// Hand `op` to the supervisor's state machine and wait for its answer.
async fn ask(
    mut op: Op,
    events: &mpsc::UnboundedSender<Event>,
    peer: &str,
    conn: Option<OwnedFd>,
) -> OpResult {
    if let Op::Restart { via, .. } = &mut op {
        via.get_or_insert_with(|| "cli".into());
    }
    match &op {
        Op::Restart { exe, .. } => tracing::info!(
            peer_pid = %peer,
            exe = exe.as_deref().unwrap_or("(recorded)"),
            "control: restart requested"
        ),
        Op::Shutdown => tracing::info!(peer_pid = %peer, "control: shutdown requested"),
        Op::Status => tracing::debug!(peer_pid = %peer, "control: status requested"),
        Op::ReopenLogs => tracing::info!(peer_pid = %peer, "control: reopen-logs requested"),
    }
    let (tx, rx) = oneshot::channel();
    let reply = match conn {
        Some(conn) => Reply::Client { tx, conn },
        None => Reply::Local(tx),
    };
    if events.send(Event::Op(op, reply)).is_err() {
        return Err(OpError::Unavailable("the supervisor is exiting".into()));
    }
    rx.await.unwrap_or_else(|_| {
        Err(OpError::Unavailable(
            "the supervisor exited before answering".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use super::*;
    use crate::channel::{OpReply, Status};
    use crate::cli::client::{request, request_raw};
    use crate::control::{ControlError, Probe, probe};

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_are_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        assert_eq!(probe(&path).unwrap(), Probe::Absent);
        // A socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(probe(&path).unwrap(), Probe::Stale);
        let (l, _) = bind(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(probe(&path).unwrap(), Probe::Alive);
        assert!(matches!(bind(&path, false), Err(ControlError::InUse(_))));
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            bind(&path, false),
            Err(ControlError::Unusable { .. })
        ));
    }

    #[tokio::test]
    async fn requests_become_ops_and_answers_come_back() {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::embedded().unwrap();
        config.control.socket = Some(d.path().join("sub/c.sock"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = ControlServer::start(&config, tx).unwrap();
        let path = server.path().to_path_buf();
        // A stand-in supervisor.
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Event::Op(op, Reply::Local(tx) | Reply::Client { tx, .. }) = ev {
                    let r = match op {
                        Op::Status => Ok(OpReply::Status(Status::default())),
                        Op::Restart { exe, via } => Err(OpError::BadExecutable(format!(
                            "{} via {}",
                            exe.unwrap_or_default(),
                            via.unwrap_or_default()
                        ))),
                        Op::Shutdown => Ok(OpReply::ShuttingDown),
                        Op::ReopenLogs => Ok(OpReply::LogsReopened {
                            workers: 1,
                            confirmed: 1,
                            files: 1,
                            failed: vec![],
                        }),
                    };
                    let _ = tx.send(r);
                }
            }
        });
        let p = path.clone();
        let (status, restart, raw, bad) = tokio::task::spawn_blocking(move || {
            let status = request(&p, &Op::Status).unwrap();
            let restart = request(
                &p,
                &Op::Restart {
                    exe: Some("/x".into()),
                    via: None,
                },
            )
            .unwrap();
            let raw = request_raw(&p, &Op::Shutdown).unwrap();
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"op\":\"dance\"}\n").unwrap();
            let mut bad = String::new();
            BufReader::new(s).read_line(&mut bad).unwrap();
            (status, restart, raw, bad)
        })
        .await
        .unwrap();
        assert_eq!(status, Ok(OpReply::Status(Status::default())));
        assert_eq!(restart, Err(OpError::BadExecutable("/x via cli".into())));
        assert_eq!(raw, r#"{"Ok":{"kind":"shutting_down"}}"#);
        assert!(bad.contains("\"bad_request\""), "{bad}");
        server.close().await;
        assert!(!path.exists(), "socket file removed at close");
        assert!(matches!(
            request(&path, &Op::Status),
            Err(ControlError::NotRunning { .. })
        ));
    }
}
