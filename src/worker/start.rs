//! Start-up of a worker: the inherited listening sockets read from the environment, and the
//! plan's listeners adopted or bound ([`prepare`]); why a start fails ([`StartError`]).

use super::*;

/// Why a worker cannot start serving (sent to the supervisor as its `failed` reason).
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    /// `APPHOST_LISTEN_FDS` is not `KEY=FD,…`.
    #[error("{ENV_LISTEN_FDS}: malformed entry {0:?}")]
    MalformedEntry(String),
    /// `APPHOST_LISTEN_FDS` names something that is not a descriptor number.
    #[error("{ENV_LISTEN_FDS}: bad fd in {0:?}")]
    BadFd(String),
    /// An inherited descriptor cannot be used.
    #[error("inherited socket {key} (fd {fd}): {source}")]
    Inherited {
        /// Its listener key.
        key: String,
        /// Its number.
        fd: i32,
        /// Why.
        source: std::io::Error,
    },
    /// The config cannot be served (routes, handlers, TLS).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An inherited socket is not a listening TCP socket.
    #[error("inherited socket {key}: {source}")]
    NotListening {
        /// Its listener key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `systemd:NAME` address names no socket systemd passed.
    #[error("{key}: systemd passed no socket with that name ({activated})")]
    NotActivated {
        /// Its listener key.
        key: String,
        /// What systemd did pass.
        activated: String,
    },
    /// A new address cannot be bound.
    #[error("cannot listen on {key}: {source}")]
    Listen {
        /// Its listener key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// A socket cannot be duplicated or registered with the runtime.
    #[error("{key}: {source}")]
    Socket {
        /// Its listener key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
}

pub(super) fn inherited_listeners() -> Result<HashMap<String, OwnedFd>, StartError> {
    let mut out = HashMap::new();
    let Ok(v) = std::env::var(ENV_LISTEN_FDS) else {
        return Ok(out);
    };
    for item in v.split(',').filter(|s| !s.is_empty()) {
        let (key, fd) = item
            .rsplit_once('=')
            .ok_or_else(|| StartError::MalformedEntry(item.into()))?;
        let n: i32 = fd.parse().map_err(|_| StartError::BadFd(item.into()))?;
        let inherited = |source| StartError::Inherited {
            key: key.into(),
            fd: n,
            source,
        };
        // One descriptor may come under two keys (a systemd socket's address and its name):
        // it is adopted once, and the second key gets a duplicate.
        let fd = match out.values().find(|f: &&OwnedFd| f.as_raw_fd() == n) {
            Some(first) => first.try_clone().map_err(inherited)?,
            None => crate::sys::adopt_fd(n).map_err(inherited)?,
        };
        out.insert(key.to_string(), fd);
    }
    Ok(out)
}

/// The plan's listeners, adopted or bound, ready to serve.
pub(super) struct Prepared {
    pub(super) listeners: Vec<(serve::listen::Listener, Endpoint)>,
    /// Each server's readiness request, with an endpoint serving its routes.
    pub(super) gates: Vec<(crate::config::ReadinessConfig, Endpoint)>,
    pub(super) newly_bound: Vec<(String, OwnedFd)>,
    pub(super) tls_files: Vec<String>,
    pub(super) certs: Vec<Arc<CertStore>>,
}

/// Adopt the inherited socket of every listener in `plan` (by address key), bind the missing
/// ones, and pair each with what it serves.
pub(super) fn prepare(
    plan: Plan,
    mut inherited: HashMap<String, OwnedFd>,
    logs: &AccessLogs,
) -> Result<Prepared, StartError> {
    let mut listeners = Vec::new();
    let mut gates = Vec::new();
    let mut newly_bound = Vec::new();
    let mut tls_files = Vec::new();
    let mut certs = Vec::new();
    // What systemd passed by name, for the error when a `systemd:NAME` is not among them.
    let mut activated: Vec<&str> = inherited
        .keys()
        .filter(|k| k.starts_with("systemd:"))
        .map(String::as_str)
        .collect();
    activated.sort_unstable();
    let activated = if activated.is_empty() {
        "it passed no named sockets: set FileDescriptorName= in the socket unit, or use the \
         address the socket is bound to"
            .to_string()
    } else {
        format!("it passed {}", activated.join(", "))
    };
    for server in plan.servers {
        let limit = serve::conn_limit::ConnLimit::new(&server.name, server.max_connections);
        let mut addrs: Vec<(ListenAddr, Option<TlsAcceptor>)> =
            server.http.into_iter().map(|a| (a, None)).collect();
        if let Some(h) = server.https {
            tls_files.push(h.cert.display().to_string());
            tls_files.push(h.key.display().to_string());
            certs.push(h.store);
            addrs.extend(
                h.addresses
                    .into_iter()
                    .map(|a| (a, Some(h.acceptor.clone()))),
            );
        }
        // Its access log, and the metrics' counting when its routes count.
        let observer = crate::observe::both(logs.log(&server.name), server.routes.counts());
        if let Some(r) = &server.readiness {
            // The readiness request is the worker's own, not a client's: not logged.
            gates.push((
                r.clone(),
                Endpoint {
                    key: format!("{} readiness", server.name),
                    routes: server.routes.clone(),
                    tls: None,
                    observer: None,
                    proxy_protocol: false,
                    limit: None,
                },
            ));
        }
        for (addr, tls) in addrs {
            let key = addr.key().to_string();
            let socket_error = |source| StartError::Socket {
                key: key.clone(),
                source,
            };
            let listen_error = |source| StartError::Listen {
                key: key.clone(),
                source,
            };
            let bound = match inherited.remove(&key) {
                Some(fd) => {
                    let b =
                        serve::listen::adopt(fd).map_err(|source| StartError::NotListening {
                            key: key.clone(),
                            source,
                        })?;
                    if let (Some(path), Some(mode)) = (addr.unix_path(), server.unix_mode) {
                        serve::listen::set_unix_mode(path, mode).map_err(listen_error)?;
                    }
                    b
                }
                None if addr.systemd_name().is_some() => {
                    return Err(StartError::NotActivated {
                        key,
                        activated: activated.clone(),
                    });
                }
                None => {
                    let b = serve::listen::bind(&addr, server.unix_mode).map_err(listen_error)?;
                    let dup = b.as_fd().try_clone_to_owned().map_err(socket_error)?;
                    newly_bound.push((key.clone(), dup));
                    b
                }
            };
            if let Err(e) = bound.set_defer_accept(server.defer_accept) {
                tracing::warn!(listener = %key, error = %e, "cannot set TCP_DEFER_ACCEPT");
            }
            let l = bound.into_tokio().map_err(socket_error)?;
            listeners.push((
                l,
                Endpoint {
                    key,
                    routes: server.routes.clone(),
                    tls,
                    observer: observer.clone(),
                    proxy_protocol: server.proxy_protocol,
                    limit: Some(limit.clone()),
                },
            ));
        }
    }
    // Inherited sockets this config no longer names are closed here; the supervisor closes its
    // copies once this generation is ready.
    drop(inherited);
    Ok(Prepared {
        listeners,
        gates,
        newly_bound,
        tls_files,
        certs,
    })
}
