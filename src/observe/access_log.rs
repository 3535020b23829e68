//! The access log: one line per request, in each server's `access_log` (see
//! [`crate::config::AccessLogConfig`]), for every request that reaches a worker — those that
//! finish on a draining generation included, since the draining worker writes them and writes
//! out its buffer before it exits.
//!
//! A server's [`AccessLog`] is the [`Observer`] of its listeners: when a request's head arrives
//! it gives the request its id ([`super::request_id`]) and keeps the `User-Agent` (and, for
//! the combined format, the `Referer`); when the request has finished (its last byte written,
//! see [`crate::serve::exchange`]) it formats the line ([`super::line`]) straight into the
//! buffer of the [`Sink`] of its output, which writes it from its own thread.
//!
//! A worker opens its logs once, at start ([`AccessLogs::open`]); servers naming the same output
//! share one sink. `apphost reopen-logs` reaches [`AccessLogs::reopen`], which answers once
//! every file is reopened (or why one could not be); the worker calls
//! [`AccessLogs::close`] as the very last thing before it exits, after the drain and after its
//! runtime has stopped (a connection cut by `shutdown_timeout` is recorded as it is dropped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{REFERER, USER_AGENT};
use http::{HeaderMap, Uri};

use super::line;
use super::request_id::RequestIds;
use super::sink::Sink;
use crate::config::{AccessLogFormat, Config, LogTarget};
use crate::serve::exchange::{Exchange, Observer, X_REQUEST_ID};

/// One server's access log.
#[derive(Debug)]
pub(crate) struct AccessLog {
    sink: Arc<Sink>,
    format: AccessLogFormat,
    /// The end of each JSON line (`,"generation":N}` and the newline: made once).
    json_tail: line::Tail,
    ids: Arc<RequestIds>,
    /// Ids go into responses (`echo_id`).
    echo_id: bool,
}

impl Observer for AccessLog {
    fn started(&self, uri: &Uri, headers: &HeaderMap, ex: &mut Exchange) {
        match uri.path_and_query() {
            Some(pq) => ex.path = Some(pq.clone()),
            None => authority_target(uri, ex),
        }
        // One pass over the names alone (a walk down a slice, each name once); a value is then
        // looked up (hashed) only for a name that is there. Cheaper than `iter()` (which also
        // follows each name's extra values) and than three lookups by name.
        let (mut agent, mut id, mut referer) = (false, false, false);
        for name in headers.keys() {
            if *name == USER_AGENT {
                agent = true;
            } else if *name == X_REQUEST_ID {
                id = true;
            } else if *name == REFERER {
                referer = self.format == AccessLogFormat::Combined;
            }
        }
        if agent {
            ex.user_agent = headers.get(USER_AGENT).cloned();
        }
        if referer {
            ex.referer = headers.get(REFERER).cloned();
        }
        let given = if id { headers.get(&X_REQUEST_ID) } else { None };
        ex.request_id = Some(self.ids.for_request(given));
        ex.echo_id = self.echo_id;
    }

    fn finished(&self, ex: &Exchange) {
        // Formatted in place, in the sink's buffer.
        self.sink.append_with(|buf, cache| match self.format {
            AccessLogFormat::Json => line::json(buf, ex, &self.json_tail, cache),
            AccessLogFormat::Combined => line::combined(buf, ex, cache),
        });
    }
}

/// A request in authority form (a `CONNECT`'s `host:port`) has no path: its target is logged in
/// the path's place, as nginx does (`"CONNECT 127.0.0.1:9000 HTTP/1.1"`).
#[cold]
fn authority_target(uri: &Uri, ex: &mut Exchange) {
    // (`ex.path` is already `None`: a record starts empty and is emptied when it finishes.)
    ex.authority = uri.authority().cloned().map(Box::new);
}

/// A worker's access logs: each server's, and the outputs they write to.
#[derive(Debug, Default)]
pub(crate) struct AccessLogs {
    by_server: BTreeMap<String, Arc<AccessLog>>,
    sinks: Vec<Arc<Sink>>,
}

/// An access log output that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {target} of server {server}: {source}")]
pub(crate) struct OpenError {
    server: String,
    target: LogTarget,
    source: std::io::Error,
}

impl AccessLogs {
    /// Open the access log of every server of `config` that has one, for generation
    /// `generation`.
    pub(crate) fn open(config: &Config, generation: u64) -> Result<AccessLogs, OpenError> {
        let mut logs = AccessLogs::default();
        let ids = Arc::new(RequestIds::new());
        for server in &config.servers {
            let Some(a) = &server.access_log else {
                continue;
            };
            let sink = match logs.sinks.iter().find(|s| *s.target() == a.target) {
                Some(s) => s.clone(),
                None => {
                    let s = Sink::open(a.target.clone()).map_err(|source| OpenError {
                        server: server.name.clone(),
                        target: a.target.clone(),
                        source,
                    })?;
                    logs.sinks.push(s.clone());
                    s
                }
            };
            logs.by_server.insert(
                server.name.clone(),
                Arc::new(AccessLog {
                    sink,
                    format: a.format,
                    json_tail: line::json_tail(generation),
                    ids: ids.clone(),
                    echo_id: a.echo_id,
                }),
            );
        }
        Ok(logs)
    }

    /// Server `name`'s access log, if it has one (its listeners' observer: see
    /// [`super::both`]).
    pub(crate) fn log(&self, name: &str) -> Option<Arc<AccessLog>> {
        self.by_server.get(name).cloned()
    }

    /// Reopen every file (logrotate), waiting until `wait` at most for each to be done: what
    /// is buffered goes to the old file first. How many files were reopened, and why others
    /// were not (each keeps writing to the file it has open).
    pub(crate) fn reopen(&self, wait: Duration) -> (u32, Vec<String>) {
        let deadline = Instant::now() + wait;
        // Every writer at once, then the waits (one deadline for all).
        let asked: Vec<(&Arc<Sink>, u64)> = self
            .sinks
            .iter()
            .filter(|s| matches!(s.target(), LogTarget::File(_)))
            .map(|s| (s, s.ask_reopen()))
            .collect();
        let mut files = 0;
        let mut failed = Vec::new();
        for (s, ticket) in asked {
            match s.wait_reopened(ticket, deadline) {
                Ok(()) => files += 1,
                Err(e) => failed.push(e),
            }
        }
        (files, failed)
    }

    /// Write out everything and stop the writers (the worker is exiting).
    pub(crate) fn close(&self) {
        for s in &self.sinks {
            s.close();
        }
    }
}
