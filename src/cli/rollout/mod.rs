//! `apphost rollout`: restart a fleet of hosts onto a new executable, canaries first, with a
//! bake that watches them, and a halt (optionally a roll-back) at the first sign of trouble.
//!
//! ```text
//! apphost rollout [--exe PATH] [--token-file F] [--cacert F] [--canary N] [--bake 30s]
//!                 [--parallel K] [--max-error-rate 1%] [--rollback] [--json] TARGET...
//! ```
//!
//! 1. **Before anything**, every target is asked for its status (worker pid, the executable it
//!    runs, its config), its `ready` route must answer 2xx, and when there is a bake the
//!    canaries' `/metrics` must be readable. If any of that fails, nothing is touched.
//! 2. The first `--canary` targets are restarted **one at a time** (with `--exe`: the admin
//!    restart's `newExeFilePath`, or the control socket's `exe`), each answer waited for (new
//!    pid, handoff), and each one's `ready` route must then answer 2xx (within 10 s).
//! 3. The **bake**: for `--bake`, every second, each canary's `ready` route must answer 2xx and
//!    the share of its requests answered 5xx since the bake began (from the deltas of
//!    `apphost_http_requests_total`, the rollout's own requests left out) must stay at or below
//!    `--max-error-rate`. It halts early once 20 requests are counted and the share is above;
//!    at the end it judges whatever was counted (no requests at all passes: say so in the log).
//! 4. The rest, `--parallel` at a time.
//!
//! Any failure **halts** it: targets not yet asked stay as they are; a batch under way is let
//! finish (its restarts cannot be called back). With `--rollback`, every target this rollout
//! moved is restarted back to the executable its status showed before (so `--rollback` needs
//! `--exe`). Exit 0 only when every target runs the new executable; 1 otherwise; 2 for bad
//! arguments. A table (or with `--json` one JSON object) on stdout; progress and the reason of
//! a halt on stderr.
//!
//! The decisions are in [`plan`] (no I/O, unit-tested), the hosts' side in [`target`], the
//! HTTP(S) client in [`http`], the counter's reading in [`metrics`].

mod http;
mod metrics;
mod plan;
mod probes;
mod report;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::channel::RestartOutcome;
use plan::{Restarted, Rollout, Shape, Step};
use probes::Probes;
use report::Row;
use target::{Ctx, Target};

/// How long a restarted target's `ready` route has to answer 2xx.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How often the bake looks.
const BAKE_TICK: Duration = Duration::from_secs(1);
/// How many targets are asked at once before the rollout (status, `ready`, `/metrics`).
const PREFLIGHT_AT_ONCE: usize = 16;

/// `apphost rollout`'s options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Admin base URLs (`https://HOST:PORT/debug/admin`) or control sockets of hosts on this
    /// machine, in the order to roll them.
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,
    /// The new executable (absolute when a target is a URL: it names a file on that host).
    /// Without it, each host restarts its recorded executable.
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// A file holding the admin token, sent to URL targets as `Authorization: Bearer`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for HTTPS targets, instead of the system's store.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// How many targets go first, one at a time, and are baked.
    #[arg(long, default_value_t = 1, value_name = "N")]
    canary: usize,
    /// How long the canaries are watched before the rest go (0s: no bake).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    bake: Duration,
    /// After the bake, how many targets restart at once.
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = parse_parallel)]
    parallel: usize,
    /// The most 5xx answers a canary may give during the bake, as a share of its requests.
    #[arg(long, default_value = "1%", value_name = "PERCENT", value_parser = plan::parse_rate)]
    max_error_rate: f64,
    /// On a halt, restart every target this rollout moved back to its previous executable.
    #[arg(long, requires = "exe")]
    rollback: bool,
    /// Allow plain HTTP to targets that are not this machine.
    #[arg(long)]
    insecure: bool,
    /// The readiness route's path (default: `/ready` for URL targets; for control sockets, the
    /// route with the `ready` handler in the host's config).
    #[arg(long, value_name = "PATH")]
    ready_path: Option<String>,
    /// How long one restart may take to answer.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration::parse_duration(s)
}

fn parse_parallel(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: a number of targets, at least 1")),
    }
}

/// Run `apphost rollout`.
pub(crate) fn run(args: Args) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("apphost: rollout: {msg}");
        ExitCode::from(2)
    };
    let targets: Vec<Target> = match args
        .targets
        .iter()
        .map(|t| Target::parse(t, args.insecure))
        .collect::<Result<_, _>>()
    {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if let Some(dup) = targets
        .iter()
        .enumerate()
        .find_map(|(i, t)| targets[..i].iter().any(|o| o.same_as(t)).then_some(t))
    {
        return usage(format!(
            "{} is given twice (a host would be asked to restart while it restarts)",
            dup.label
        ));
    }
    let exe = match &args.exe {
        None => None,
        Some(p) if p.is_absolute() => Some(p.to_string_lossy().into_owned()),
        Some(p) if targets.iter().any(Target::is_remote) => {
            return usage(format!(
                "--exe {}: give an absolute path (it names a file on the hosts)",
                p.display()
            ));
        }
        Some(p) => match std::path::absolute(p) {
            Ok(a) => Some(a.to_string_lossy().into_owned()),
            Err(e) => return usage(format!("--exe {}: {e}", p.display())),
        },
    };
    let token = match &args.token_file {
        None => None,
        Some(f) => match crate::config::file::read_regular(f, 64 * 1024) {
            Ok((t, _)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => return usage(format!("--token-file {}: empty", f.display())),
            Err(e) => return usage(format!("--token-file {}: {e}", f.display())),
        },
    };
    let client = match http::Client::with_tls(args.cacert.as_deref()) {
        Ok(c) => c,
        // Without roots, HTTPS cannot be used; that only matters when a target needs it.
        Err(e) if args.cacert.is_some() || targets.iter().any(Target::is_https) => {
            return usage(e.to_string());
        }
        Err(_) => http::Client::plain(),
    };
    let ctx = Ctx {
        client,
        token,
        ready_path: args.ready_path.clone(),
        restart_timeout: args.timeout,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apphost: rollout: {e}");
            return ExitCode::from(1);
        }
    };
    let shape = Shape {
        targets: targets.len(),
        canary: args.canary,
        bake: !args.bake.is_zero(),
        parallel: args.parallel,
        rollback: args.rollback,
    };
    let driver = Driver {
        ctx: Arc::new(ctx),
        targets: Arc::new(targets),
        exe,
        bake: args.bake,
        max_rate: args.max_error_rate,
    };
    let (rollout, rows) = rt.block_on(driver.drive(shape));
    if let Some(h) = rollout.halted() {
        let at = h
            .target
            .map(|i| format!(" at {}", driver.targets[i].label))
            .unwrap_or_default();
        eprintln!("apphost: rollout halted{at}: {}", h.reason);
    }
    if args.json {
        println!(
            "{}",
            report::json(&driver.targets, driver.exe.as_deref(), &rollout, &rows)
        );
    } else {
        print!(
            "{}",
            report::table(&driver.targets, driver.exe.is_some(), &rollout, &rows)
        );
    }
    if rollout.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The rollout's I/O: it performs the [`Step`]s the [`Rollout`] asks for.
struct Driver {
    ctx: Arc<Ctx>,
    targets: Arc<Vec<Target>>,
    exe: Option<String>,
    bake: Duration,
    max_rate: f64,
}

impl Driver {
    async fn drive(&self, shape: Shape) -> (Rollout, Vec<Row>) {
        let mut rollout = Rollout::new(shape);
        let mut rows = self.preflight(shape).await;
        if let Some((i, why)) = rows
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.refused.clone().map(|w| (i, w)))
        {
            rollout.refuse(
                Some(i),
                format!("before the start: {why} (nothing was touched)"),
            );
        }
        loop {
            match rollout.next_step() {
                Step::Restart(batch) => {
                    for (i, result, outcome) in self.restart_batch(&batch, &rows, false).await {
                        rows[i].restart = outcome;
                        rollout.restarted(i, result);
                    }
                }
                Step::Bake(canaries) => {
                    let verdict = self.bake(&canaries, &rows).await;
                    rollout.baked(verdict);
                }
                Step::RollBack(moved) => {
                    for (i, result, outcome) in self.restart_batch(&moved, &rows, true).await {
                        rows[i].rollback = outcome;
                        rollout.rolled_back(
                            i,
                            match result {
                                Restarted::Ok => Ok(()),
                                Restarted::Refused(r) | Restarted::NotReady(r) => Err(r),
                            },
                        );
                    }
                }
                Step::Done => break,
            }
        }
        (rollout, rows)
    }

    /// Ask every target for its status and where its probes are; check `ready` (and the
    /// canaries' `/metrics` when there is a bake).
    async fn preflight(&self, shape: Shape) -> Vec<Row> {
        let mut rows: Vec<Row> = (0..self.targets.len()).map(|_| Row::default()).collect();
        let mut set = JoinSet::new();
        let mut next = 0;
        loop {
            while next < self.targets.len() && set.len() < PREFLIGHT_AT_ONCE {
                let (ctx, targets, i) = (self.ctx.clone(), self.targets.clone(), next);
                let scrape = shape.bake && !self.bake.is_zero() && i < shape.canary;
                set.spawn(async move {
                    let t = &targets[i];
                    let r = async {
                        let facts = t.status(&ctx).await?;
                        if facts.phase != "serving" {
                            return Err(format!("the host is {}, not serving", facts.phase));
                        }
                        let probes = t.probes(&ctx, &facts)?;
                        t.ready(&ctx, &probes).await?;
                        if scrape {
                            t.scrape(&ctx, &probes).await?;
                        }
                        Ok((facts, probes))
                    }
                    .await;
                    (i, r)
                });
                next += 1;
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let Ok((i, r)) = done else {
                continue;
            };
            match r {
                Ok((facts, probes)) => {
                    rows[i].before = Some(facts);
                    rows[i].probes = Some(probes);
                }
                Err(e) => rows[i].refused = Some(e),
            }
        }
        for (t, r) in self.targets.iter().zip(&rows) {
            if r.probes.is_none() && r.refused.is_none() {
                // A task that panicked: nothing to say but that it was not asked.
                eprintln!("rollout: {}: not asked (internal error)", t.label);
            }
        }
        rows.iter_mut()
            .filter(|r| r.probes.is_none() && r.refused.is_none())
            .for_each(|r| r.refused = Some("internal error".into()));
        rows
    }

    /// Restart `batch` at once (to the new executable, or `back` to each one's previous), then
    /// wait for each to be ready.
    async fn restart_batch(
        &self,
        batch: &[usize],
        rows: &[Row],
        back: bool,
    ) -> Vec<(usize, Restarted, Option<RestartOutcome>)> {
        let mut set = JoinSet::new();
        for &i in batch {
            let (ctx, targets) = (self.ctx.clone(), self.targets.clone());
            let Some(before) = rows[i].before.clone() else {
                continue;
            };
            let Some(probes) = rows[i].probes.clone() else {
                continue;
            };
            // Going back: to the executable the status showed, from the generation now serving.
            let (exe, from) = if back {
                let mut now = before.clone();
                if let Some(o) = &rows[i].restart {
                    now.generation = o.generation;
                    now.worker_pid = Some(o.pid);
                }
                (Some(before.exe.clone()), now)
            } else {
                (self.exe.clone(), before)
            };
            let what = if back { "rolling back" } else { "restarting" };
            eprintln!("rollout: {}: {what}…", targets[i].label);
            set.spawn(async move {
                let t = &targets[i];
                let o = match t.restart(&ctx, exe.as_deref(), &from).await {
                    Ok(o) => o,
                    Err(e) => return (i, Restarted::Refused(e), None),
                };
                eprintln!(
                    "rollout: {}: pid {} (was {}), handoff {}; checking ready",
                    t.label,
                    o.pid,
                    o.old_pid.map_or_else(|| "none".into(), |p| p.to_string()),
                    report::human_ms(o.handoff_ms)
                );
                let deadline = Instant::now() + READY_WAIT;
                loop {
                    match t.ready(&ctx, &probes).await {
                        Ok(()) => return (i, Restarted::Ok, Some(o)),
                        Err(e) if Instant::now() > deadline => {
                            let why =
                                format!("restarted, but not ready within {READY_WAIT:?}: {e}");
                            return (i, Restarted::NotReady(why), Some(o));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.0);
        out
    }

    /// Watch the canaries for the bake; `Err` names the first that failed, and why.
    async fn bake(&self, canaries: &[usize], rows: &[Row]) -> Result<(), (usize, String)> {
        let ctx = &self.ctx;
        let mut base = Vec::new();
        for &i in canaries {
            let (t, p) = (&self.targets[i], probes(rows, i)?);
            base.push(t.scrape(ctx, p).await.map_err(|e| (i, e))?);
        }
        eprintln!(
            "rollout: baking {} on {} canar{} (max 5xx {})…",
            crate::config::duration::format_duration(self.bake),
            canaries.len(),
            if canaries.len() == 1 { "y" } else { "ies" },
            plan::percent(self.max_rate)
        );
        let started = Instant::now();
        loop {
            let last = started.elapsed() >= self.bake;
            if !last {
                let left = self.bake.saturating_sub(started.elapsed());
                tokio::time::sleep(left.min(BAKE_TICK)).await;
            }
            let mut seen = metrics::Tally::default();
            for (k, &i) in canaries.iter().enumerate() {
                let (t, p) = (&self.targets[i], probes(rows, i)?);
                t.ready(ctx, p)
                    .await
                    .map_err(|e| (i, format!("not ready: {e}")))?;
                let now = t.scrape(ctx, p).await.map_err(|e| (i, e))?;
                let tally = now.since(&base[k], |r| p.skips(r));
                plan::judge(tally, self.max_rate, last).map_err(|e| (i, e))?;
                seen = seen.plus(tally);
            }
            if last {
                eprintln!(
                    "rollout: bake passed: {} requests, {} answered 5xx{}",
                    seen.total,
                    seen.errors,
                    if seen.total == 0.0 {
                        " (no traffic reached the canaries: the error rate was not measured)"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
        }
    }
}

/// A target's probes (present for every target that passed the preflight).
fn probes(rows: &[Row], i: usize) -> Result<&Probes, (usize, String)> {
    rows[i]
        .probes
        .as_ref()
        .ok_or((i, "not asked before the rollout".to_string()))
}
