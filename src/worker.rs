//! A worker: one generation of the host. Started by the supervisor as `EXE __worker …` with the
//! listening sockets and a channel inherited; never started by hand.
//!
//! Start-up: load the config, build every server's route table and TLS, adopt the inherited
//! sockets by address key and bind the missing ones, start the accept loops, then hand newly
//! bound sockets to the supervisor (`bound`) and report `ready`. Any failure before that is
//! reported as `failed` with the reason and the worker exits 2: the supervisor keeps the old
//! generation serving. A warm standby (`APPHOST_STANDBY`) has done its process start-up and
//! parsed the config ahead, and starts there when `activate` comes (see `standby`). From then on
//! the worker is one task on its runtime's threads, so a channel message is handled by the
//! thread that hears it.
//!
//! Readiness: the worker's `ready` routes answer from one [`Readiness`]: serving from the start
//! when another generation serves (`APPHOST_HOST_SERVING`), else once this worker is ready;
//! going away (503) from the supervisor's `going_away` (a shutdown with `shutdown_delay`) or a
//! shutdown's `drain`, while it goes on serving until the drain.
//!
//! Handoff: once ready, a generation started as a standby tells the serving one directly that it
//! accepts, and that one stops accepting without waiting for its `drain` to come through the
//! supervisor (see `successor`).
//!
//! Serving: the worker waits for the supervisor's `drain`, or for its channel to close (the
//! supervisor died), then drains (see [`crate::serve`]) within `shutdown_timeout` and exits 0.
//! Signals sent to the worker itself are turned into requests to the supervisor: SIGUSR1 asks for
//! a restart; SIGINT, SIGTERM, SIGQUIT and SIGHUP ask for a shutdown.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::channel::{
    Channel, ENV_ACCEPTING_FD, ENV_CHANNEL_FD, ENV_GENERATION, ENV_HOST_SERVING, ENV_LISTEN_FDS,
    ENV_STANDBY, ENV_SUPERVISOR_METRICS, Msg, Op, WorkerSettings,
};
use crate::config::Config;
use crate::config::ListenAddr;
use crate::handler::Registry;
use crate::handlers::ready::{self, Readiness, ReadyState};
use crate::observe::access_log::AccessLogs;
use crate::ops::{Link, OpError, OpResult, Pending};
use crate::plan::{Plan, PlanError};
use crate::serve::{self, Endpoint, Serving, tls::CertStore};
use crate::tally::WorkerTally;
use tokio_rustls::TlsAcceptor;

mod certs;
mod relay;
mod standby;
mod start;
mod successor;

use certs::watch_certs;
use relay::{Relay, WorkerSignal, WorkerSignals};
use start::{StartError, inherited_listeners, prepare};

/// How a worker was asked to start.
#[derive(Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// The config file; `None` = the embedded default.
    pub(crate) config: Option<PathBuf>,
}

/// The worker entry point (the hidden `__worker` subcommand).
pub(crate) fn main(registry: &Registry, args: WorkerArgs) -> ExitCode {
    let generation: u64 = std::env::var(ENV_GENERATION)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let chan_fd = match std::env::var(ENV_CHANNEL_FD)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => match crate::sys::adopt_fd(n) {
            Ok(fd) => fd,
            Err(e) => return early_fail(None, &format!("channel fd {n}: {e}")),
        },
        None => {
            eprintln!("apphost: `__worker` is started by `apphost run`, not by hand");
            return ExitCode::from(2);
        }
    };
    let inherited = match inherited_listeners() {
        Ok(m) => m,
        Err(e) => return early_fail(Some(chan_fd.as_fd()), &e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return early_fail(
                Some(chan_fd.as_fd()),
                &format!("cannot start the runtime: {e}"),
            );
        }
    };
    // One channel for the worker's whole life, standby included: reading the activation
    // through a second registration of the same socket (a duplicate descriptor) left the first
    // one's wake-ups late, so a drain could wait for an unrelated event.
    let chan = {
        let _runtime = rt.enter();
        match chan_fd.try_clone().and_then(Channel::new) {
            Ok(c) => Arc::new(c),
            Err(e) => return early_fail(Some(chan_fd.as_fd()), &format!("channel: {e}")),
        }
    };
    drop(chan_fd);
    let standby = std::env::var_os(ENV_STANDBY).is_some();
    // Where to say, once ready, that this generation accepts (see `successor`).
    let accepting = match std::env::var(ENV_ACCEPTING_FD).map(|v| v.parse()) {
        Ok(Ok(n)) => crate::sys::adopt_fd(n).ok(),
        _ => None,
    };
    let task = start(
        registry.clone(),
        args,
        chan,
        inherited,
        generation,
        standby,
        accepting,
    );
    let (code, logs) = rt.block_on(on_runtime(task));
    // Connections still open past shutdown_timeout are cut here (and recorded as cut).
    rt.shutdown_timeout(Duration::from_millis(100));
    // Last: every request this generation served, the drain's included, is in the log.
    if let Some(logs) = logs {
        logs.close();
    }
    code
}

/// The worker once its runtime is up, as one task: a standby's wait for its activation, the
/// config, logging and access logs, then [`run`]. One task from the activation to the accept
/// loops: no hand-over to another thread on the way. Returns the exit code and the access logs
/// to close once the runtime is down.
async fn start(
    registry: Registry,
    args: WorkerArgs,
    chan: Arc<Channel>,
    inherited: HashMap<String, OwnedFd>,
    mut generation: u64,
    standby: bool,
    accepting: Option<OwnedFd>,
) -> (ExitCode, Option<Arc<AccessLogs>>) {
    let mut early = None;
    let mut log_ahead = None;
    if standby {
        // A warm standby: process start-up (exec, loader, runtime), the config's parse and the
        // log subscriber are done ahead of the restart; the config served is still the file as
        // it is when activated, and the subscriber installed the one its `log` asks for (see
        // `standby`).
        early = standby::EarlyConfig::read(args.config.as_deref());
        log_ahead = early
            .as_ref()
            .map(|e| crate::logging::Ahead::build(e.log()));
        standby::warm_up().await;
        match wait_for_activation(&chan).await {
            Ok(Some(g)) => generation = g,
            Ok(None) => return (ExitCode::SUCCESS, None),
            Err(e) => {
                let reason = format!("standby channel: {e}");
                return (early_fail(Some(chan.as_fd()), &reason), None);
            }
        }
    }
    let config = match early.and_then(standby::EarlyConfig::if_unchanged) {
        Some(c) => Ok(c),
        None => match &args.config {
            Some(p) => Config::load(p),
            None => Config::embedded(),
        },
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return (early_fail(Some(chan.as_fd()), &e.to_string()), None),
    };
    // The supervisor has said what is wrong with APPHOST_LOG, if anything.
    let _ = match log_ahead {
        Some(ahead) => ahead.install_for(&config.log),
        None => crate::logging::init(&config.log),
    };
    crate::serve::raise_fd_limit();
    let logs = match AccessLogs::open(&config, generation) {
        Ok(l) => Arc::new(l),
        Err(e) => return (early_fail(Some(chan.as_fd()), &e.to_string()), None),
    };
    let code = run(
        registry,
        config,
        chan,
        accepting,
        inherited,
        generation,
        logs.clone(),
    )
    .await;
    (code, Some(logs))
}

/// Run `task` on the runtime's threads rather than on the thread that blocks on it: a message on
/// the channel (the standby's `activate`, the `drain` that stops the accept loops) is then
/// handled by the thread that hears it, not passed on to the parked main thread first.
async fn on_runtime<T: Send + 'static>(task: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(task).await {
        Ok(t) => t,
        // Only a panic ends it early (nothing cancels it while it is waited for): passed on.
        Err(e) => std::panic::resume_unwind(
            e.try_into_panic()
                .unwrap_or_else(|e| Box::new(e.to_string())),
        ),
    }
}

/// Wait on the channel for `activate`: the generation number to become. `drain` or a closed
/// channel (the standby is not needed): `None`.
async fn wait_for_activation(chan: &Channel) -> std::io::Result<Option<u64>> {
    loop {
        match chan.recv().await? {
            Some((Msg::Activate { generation }, _)) => return Ok(Some(generation)),
            Some((Msg::Drain { .. }, _)) | None => return Ok(None),
            Some(_) => {}
        }
    }
}

fn early_fail(chan: Option<BorrowedFd<'_>>, reason: &str) -> ExitCode {
    eprintln!("pid[{}]: cannot start: {reason}", std::process::id());
    if let Some(fd) = chan {
        let _ = crate::channel::send_blocking(
            fd,
            &Msg::Failed {
                reason: reason.into(),
            },
            &[],
        );
    }
    ExitCode::from(2)
}

async fn run(
    mut registry: Registry,
    config: Config,
    chan: Arc<Channel>,
    accepting: Option<OwnedFd>,
    inherited: HashMap<String, OwnedFd>,
    generation: u64,
    logs: Arc<AccessLogs>,
) -> ExitCode {
    let (max_requests, recycle) = crate::recycle::for_worker(config.recycle.as_ref());
    let serving = Serving::new(
        crate::serve::watchdog::Limits {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            keepalive_grace: config.keepalive_grace,
            send_timeout: config.send_timeout,
            stream_grace: config.stream_grace,
            route_timeout: crate::config::guards::shortest_route_timeout(&config),
        },
        config.http2_max_concurrent_streams,
        max_requests,
    );
    // Made before the first connection is accepted: a handler asking for an operation (the
    // admin page) must find it. Requests made before `ready` wait in the queue until the loop
    // below relays them.
    // Requests are counted when the config asks for metrics anywhere (see `observe`).
    let tally = crate::observe::wanted(&config).then(|| Arc::new(WorkerTally::default()));
    let (link, mut req_rx) = Link::new(generation, serving.clone(), tally);
    link.register_for_library();
    let readiness = Readiness::new(if std::env::var_os(ENV_HOST_SERVING).is_some() {
        ReadyState::Serving
    } else {
        ReadyState::Starting
    });
    // This worker's `ready` routes answer from its own state.
    if registry.get("ready").is_some() {
        registry.insert("ready", ready::factory(readiness.clone()));
    }
    // ... and its `metrics` routes from the host's counters, through its link.
    if registry.get(crate::observe::HANDLER_NAME).is_some() {
        registry.insert(
            crate::observe::HANDLER_NAME,
            crate::observe::factory(Some(link.clone())),
        );
    }
    let prepared = match Plan::build(&config, &registry, Some(&link))
        .map_err(StartError::from)
        .and_then(|plan| prepare(plan, inherited, &logs))
    {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
            tracing::error!("cannot start: {reason}");
            let _ = chan.send(&Msg::Failed { reason }, &[]).await;
            return ExitCode::from(2);
        }
    };
    // The application's checks, then each server's readiness request, before anything accepts:
    // a generation that fails them has served nobody.
    readiness.serving();
    if let Err(reason) = start_checks(&registry, &prepared.gates, &serving).await {
        tracing::error!("cannot start: {reason}");
        let _ = chan.send(&Msg::Failed { reason }, &[]).await;
        return ExitCode::from(2);
    }
    let mut keys = Vec::new();
    let mut started = Vec::new();
    let mut accept_loops = Vec::new();
    for (l, ep) in prepared.listeners {
        keys.push(ep.key.clone());
        started.push((ep.key.clone(), ep.tls.is_some()));
        accept_loops.push(tokio::spawn(serve::accept_loop(l, ep, serving.clone())));
    }
    for (key, fd) in &prepared.newly_bound {
        if let Err(e) = chan
            .send(&Msg::Bound { key: key.clone() }, &[fd.as_fd()])
            .await
        {
            tracing::error!("cannot hand socket {key} to the supervisor: {e}");
            return ExitCode::from(2);
        }
    }
    drop(prepared.newly_bound);
    let settings = WorkerSettings {
        graceful: config.graceful,
        graceful_timeout_ms: config.graceful_timeout.as_millis() as u64,
        shutdown_timeout_ms: config.shutdown_timeout.as_millis() as u64,
        listeners: keys,
        watch_executable: config.watch.executable,
        watch_config: config.watch.config,
        watch_settle_ms: config.watch.settle.as_millis() as u64,
        tls_files: prepared.tls_files,
        warm_standby: config.warm_standby,
        shutdown_delay_ms: config.shutdown_delay.as_millis() as u64,
        recycle,
    };
    // Before the ready report: once the supervisor has it, a signal to this worker must find
    // the handlers (SIGUSR1's default action would kill the worker).
    let mut sigs = WorkerSignals::new();
    // Accepting: the previous generation may stop accepting now, before the supervisor hears of
    // it (its `drain` follows the ready report). Told first, as sending the report wakes the
    // supervisor, which on a busy machine may take this thread's core for a while. `accepting`
    // stays open until this process ends: should it end before the supervisor has taken the
    // report, the previous generation accepts again.
    if let Some(fd) = &accepting {
        successor::announce(fd);
    }
    if chan
        .send(
            &Msg::Ready {
                pid: std::process::id(),
                settings,
            },
            &[],
        )
        .await
        .is_err()
    {
        tracing::error!("the supervisor is gone; exiting");
        return ExitCode::from(2);
    }
    let verb = if generation > 1 {
        "reloaded"
    } else {
        "started"
    };
    for (key, tls) in &started {
        let scheme = if *tls { "https" } else { "http" };
        tracing::info!("{scheme} server {verb} listening on [{key}]");
    }
    watch_certs(prepared.certs, config.watch.settle);

    let mut relay = Relay::new(chan.clone(), link.clone());
    relay.metrics_supervisor = std::env::var_os(ENV_SUPERVISOR_METRICS).is_some();
    // Stop signals this worker has had. The kernel sends one (SIGTERM, the parent-death signal)
    // when the supervisor is killed, together with the channel closing: whichever is seen first,
    // that one signal must not count as a second one during the drain, which would cut the
    // requests in flight.
    let mut stops = 0u32;
    // `recycle.max_requests`: told to the supervisor once, when passed.
    let requests = serving.requests.clone();
    let mut recycle_told = requests.is_none();

    // The next generation's pipe, once a standby has been started (see `successor`).
    let mut successor: Option<successor::Watch> = None;
    // Whether the next generation has said, through that pipe, that it accepts.
    let mut paused = false;
    // The counts go to the supervisor every `COUNTS_EVERY` (when they changed), not only with
    // each scrape: a worker killed outright loses at most that much of them.
    let mut report = counts_interval();
    let shutdown = loop {
        tokio::select! {
            _ = report.tick(), if relay.open && link.tally().is_some() => relay.report_counts().await,
            said = successor::Watch::next(successor.as_ref()) => match said {
                successor::Said::Accepting => {
                    serving.pause_accepting();
                    paused = true;
                }
                successor::Said::Gone => {
                    serving.resume_accepting();
                    successor = None;
                    paused = false;
                }
            },
            () = requests_reached(requests.as_deref()), if !recycle_told => {
                recycle_told = true;
                if let Some(r) = &requests {
                    let reason = crate::recycle::requests_reason(r.get(), r.limit());
                    tracing::info!("{reason}; asking to be recycled");
                    if let Err(e) = chan.send(&Msg::Recycle { reason }, &[]).await {
                        tracing::warn!("cannot ask the supervisor to recycle: {e}");
                    }
                }
            }
            m = chan.recv() => match m {
                Ok(Some((Msg::Drain { shutdown }, _))) => break shutdown,
                Ok(Some((Msg::WatchSuccessor, fds))) => {
                    // A new standby: what an earlier one said no longer holds.
                    if successor.is_some() {
                        serving.resume_accepting();
                        paused = false;
                    }
                    successor = fds.into_iter().next().and_then(|fd| successor::Watch::new(fd).ok());
                }
                Ok(Some((Msg::GoingAway, _))) => {
                    tracing::info!("going away: `ready` answers 503; serving until the drain");
                    readiness.going_away();
                }
                Ok(Some((Msg::Reply { id, result }, _))) => relay.deliver(id, result),
                Ok(Some((Msg::ReopenLogs { id }, _))) => reopen_logs(&logs, &chan, id),
                Ok(Some((Msg::Metrics { id, metrics }, _))) => relay.deliver_metrics(id, *metrics),
                Ok(Some((other, _))) => tracing::debug!(?other, "unexpected message ignored"),
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the supervisor; draining");
                    break true;
                }
            },
            Some(asked) = req_rx.recv() => relay.ask(asked).await,
            s = sigs.next() => {
                let op = match s {
                    WorkerSignal::Restart => Op::Restart { exe: None, via: Some("signal".into()) },
                    WorkerSignal::Stop => {
                        stops += 1;
                        Op::Shutdown
                    }
                };
                relay.forward(op, None).await;
            }
        }
    };
    if shutdown {
        readiness.going_away();
    } else if paused {
        // Paused through the pipe, this generation no longer accepts; its `drain` comes right
        // after the next one's `ready`, when that one answers its first connections. The drain's
        // work (stopping the accept loops and every idle connection, the log line) waits a few
        // milliseconds so as not to take a core from it then; the connections open here are
        // served meanwhile as before.
        tokio::time::sleep(DRAIN_AFTER_PAUSE).await;
    }
    // Stopping the accept loops comes first: until then this worker takes connections that
    // the new generation, already accepting, would take.
    serving.start_drain();
    crate::drain::begin();
    if shutdown {
        tracing::info!("server shutting down");
    } else {
        tracing::info!("server reloading");
    }
    // A loop may be handing over a connection it has just accepted: count it before waiting for
    // the connections to finish.
    for l in accept_loops {
        let _ = l.await;
    }
    let deadline = tokio::time::sleep(config.shutdown_timeout);
    tokio::pin!(deadline);
    // While draining, the supervisor hears this worker's counts every second (the serving
    // generation's scrapes include them), and a last time when the drain is over.
    let mut report = counts_interval();
    let code = loop {
        tokio::select! {
            _ = serving.wait_idle() => {
                tracing::info!("all servers shutdown");
                break ExitCode::SUCCESS;
            }
            _ = &mut deadline => {
                tracing::warn!(connections = serving.connections(), "shutdown_timeout reached; closing what is left");
                tracing::info!("all servers shutdown");
                break ExitCode::SUCCESS;
            }
            m = chan.recv(), if relay.open => match m {
                Ok(Some((Msg::Reply { id, result }, _))) => relay.deliver(id, result),
                // A draining worker still writes lines: it follows a rotation too.
                Ok(Some((Msg::ReopenLogs { id }, _))) => reopen_logs(&logs, &chan, id),
                Ok(Some((Msg::Metrics { id, metrics }, _))) => relay.deliver_metrics(id, *metrics),
                Ok(Some(_)) => {}
                // The supervisor is gone; keep draining to the deadline.
                Ok(None) | Err(_) => relay.close(),
            },
            // A handler still running may ask for an operation (status, …): pass it on.
            Some(asked) = req_rx.recv() => relay.ask(asked).await,
            _ = report.tick(), if relay.open && link.tally().is_some() => relay.report_counts().await,
            s = sigs.next() => {
                if s == WorkerSignal::Stop {
                    stops += 1;
                    if stops >= 2 {
                        tracing::warn!("second stop signal during the drain: exiting now");
                        break ExitCode::from(1);
                    }
                }
            }
        }
    };
    // The final counts: every request this generation finished (the connections still open
    // past `shutdown_timeout` are cut, their requests unfinished).
    if relay.open && link.tally().is_some() {
        relay.report_counts().await;
    }
    if !shutdown {
        // Ending a process (its threads, its memory) takes a core for about half a millisecond:
        // right after a handoff that is when the new generation answers its first connections.
        tokio::time::sleep(EXIT_PAUSE).await;
    }
    code
}

/// How long a generation drained for a restart waits before it ends (see the end of [`run`]).
const EXIT_PAUSE: Duration = Duration::from_millis(50);
/// How long a generation paused by its successor waits before its drain (see [`run`]).
const DRAIN_AFTER_PAUSE: Duration = Duration::from_millis(5);

/// `apphost reopen-logs` reached this worker: reopen its files off the runtime (each writer
/// first writes what it holds, which a slow disk can make take a while), then answer the
/// supervisor (when it gave an `id`). The control loop goes on meanwhile.
fn reopen_logs(logs: &Arc<AccessLogs>, chan: &Arc<Channel>, id: Option<u64>) {
    let (logs, chan) = (logs.clone(), chan.clone());
    tokio::spawn(async move {
        let done = tokio::task::spawn_blocking(move || logs.reopen(REOPEN_WAIT)).await;
        let (files, failed) = done.unwrap_or_else(|e| (0, vec![format!("reopen failed: {e}")]));
        tracing::debug!(files, failed = failed.len(), "access log files reopened");
        if let Some(id) = id {
            let msg = Msg::LogsReopened { id, files, failed };
            if let Err(e) = chan.send(&msg, &[]).await {
                tracing::debug!("cannot answer reopen-logs: {e}");
            }
        }
    });
}

/// How long a worker waits for its access log files to be reopened before it answers without
/// them (the supervisor waits a little longer: `supervisor::driver::reopen`).
pub(crate) const REOPEN_WAIT: Duration = Duration::from_secs(5);
/// How often a worker reports its counts to the supervisor (when they changed).
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// Ticks every [`COUNTS_EVERY`], the first one after a period (a tick missed is not made up).
fn counts_interval() -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + COUNTS_EVERY, COUNTS_EVERY);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Resolves when `max_requests` is reached (never without it).
async fn requests_reached(r: Option<&crate::serve::requests::RequestCount>) {
    match r {
        Some(r) => r.reached().await,
        None => std::future::pending().await,
    }
}

/// Run the application's start-up checks ([`crate::Host::on_start`]), then every server's
/// readiness request; the first failure, as the reason the start failed.
async fn start_checks(
    registry: &Registry,
    gates: &[(crate::config::ReadinessConfig, Endpoint)],
    serving: &Arc<Serving>,
) -> Result<(), String> {
    registry
        .run_start_checks()
        .await
        .map_err(|e| format!("start-up check failed: {e}"))?;
    for (r, ep) in gates {
        serve::probe::probe(Arc::new(ep.clone()), serving.clone(), &r.path, r.timeout)
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(path = %r.path, "readiness request answered 2xx");
    }
    Ok(())
}
