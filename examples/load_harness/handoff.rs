//! Handoff mode (`--handoff`): with no other load, `--count` times: read the serving pid, take
//! t0, send SIGUSR1 to the supervisor, and poll `GET /pid` on fresh connections from
//! `--pollers` concurrent pollers, each starting its next connection as soon as the previous one
//! has answered (or `--poll-pause` after it), until a pid not seen before answers. The handoff is the earliest arrival of a
//! new pid's answer − t0.
//!
//! Besides the handoff it reports what the client saw in between: how many polls the old worker
//! answered after t0 and when it answered its last one (it accepts until the new one is ready
//! and it has read its `drain`), and the probe's own resolution: the gaps between consecutive
//! answers (any worker) before the new pid's first answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    Args, FAILS, Fail, Failure, MAX_SAMPLES, Target, emit_json, exchange, failure, ms, percentile,
};

/// GET the URL on a fresh connection; the body must be a pid.
async fn get_pid(target: &Target, request: &[u8]) -> Result<u32, Failure> {
    let mut conn = None;
    let mut buf = Vec::with_capacity(1024);
    let mut connected = false;
    let r = exchange(target, request, &mut conn, &mut buf, &mut connected).await?;
    if !(200..300).contains(&r.status) {
        return Err(failure(Fail::Non2xx, format!("status {}", r.status)));
    }
    std::str::from_utf8(&r.body)
        .ok()
        .and_then(|b| b.trim().parse().ok())
        .ok_or_else(|| {
            failure(
                Fail::ReadErr,
                format!(
                    "body {:?} is not a pid (point --url at a `pid` route)",
                    String::from_utf8_lossy(&r.body)
                ),
            )
        })
}

async fn get_pid_timed(target: &Target, request: &[u8], timeout: Duration) -> Result<u32, Failure> {
    match tokio::time::timeout(timeout, get_pid(target, request)).await {
        Ok(r) => r,
        Err(_) => Err(failure(Fail::Timeout, format!("no answer in {timeout:?}"))),
    }
}

/// One poll: when it started and ended (since t0), and what answered.
struct Poll {
    start: Duration,
    end: Duration,
    result: Result<u32, Failure>,
}

/// What one round saw.
struct Round {
    /// The new pid's first answer (arrival − t0), if one came.
    new_at: Option<Duration>,
    new_pid: Option<u32>,
    polls: Vec<Poll>,
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Poll until `done` or `timeout` after t0, sending every answer (or failure) to `out`; with a
/// `pause`, wait that long between an answer and the next connection (tokio's timer rounds it up
/// to whole milliseconds).
async fn poller(
    target: Target,
    request: Arc<[u8]>,
    t0: Instant,
    timeout: Duration,
    done: Arc<AtomicBool>,
    pause: Duration,
    out: mpsc::UnboundedSender<Poll>,
) {
    let mut first = true;
    while !done.load(Ordering::Relaxed) && t0.elapsed() < timeout {
        if !first && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        first = false;
        let start = t0.elapsed();
        let result = get_pid_timed(&target, &request, timeout).await;
        let end = t0.elapsed();
        if out.send(Poll { start, end, result }).is_err() {
            return;
        }
    }
}

/// One handoff: SIGUSR1 to `sup`, then the pollers until a pid not in `seen` answers.
async fn round(
    args: &Args,
    target: &Target,
    request: &Arc<[u8]>,
    sup: Pid,
    seen: &HashSet<u32>,
) -> Result<Round, String> {
    let done = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    kill_process(sup, Signal::USR1)
        .map_err(|e| format!("kill({}, SIGUSR1): {e}", sup.as_raw_nonzero()))?;
    for _ in 0..args.pollers {
        tokio::spawn(poller(
            target.clone(),
            request.clone(),
            t0,
            args.timeout,
            done.clone(),
            args.poll_pause,
            tx.clone(),
        ));
    }
    drop(tx);
    let mut r = Round {
        new_at: None,
        new_pid: None,
        polls: Vec::new(),
    };
    // Until every poller has stopped: an answer still in flight when the first new pid came may
    // have arrived earlier than it (each poller timestamps its own).
    while let Some(p) = rx.recv().await {
        if let Ok(pid) = p.result
            && !seen.contains(&pid)
        {
            done.store(true, Ordering::Relaxed);
            if r.new_at.is_none_or(|t| p.end < t) {
                r.new_at = Some(p.end);
                r.new_pid = Some(pid);
            }
        }
        r.polls.push(p);
    }
    Ok(r)
}

pub(crate) async fn run_handoff(args: &Args, target: Target) -> Result<bool, String> {
    let sup = args
        .restart_pid
        .ok_or("--handoff needs --restart-pid (the supervisor's pid)")?;
    let sup = Pid::from_raw(sup).expect("checked positive");
    let request: Arc<[u8]> = crate::request_bytes(&target, true).into();
    // Every pid seen so far: a round ends when one not in here answers (a worker that answered
    // before it was ready, while the old one still serves, must not count twice).
    let mut seen = HashSet::new();
    let mut prev = get_pid_timed(&target, &request, args.timeout)
        .await
        .map_err(|f| format!("reading the serving pid from {}: {}", args.url, f.detail))?;
    seen.insert(prev);
    let mut times_us: Vec<u32> = Vec::new();
    // The old worker's last answer after t0, and how many it gave, per round with one.
    let mut old_last_us: Vec<u32> = Vec::new();
    let mut old_polls: Vec<u32> = Vec::new();
    // Gaps between consecutive answers before the new pid's first: the probe's resolution.
    let mut gaps_us: Vec<u32> = Vec::new();
    let mut polls_total = 0u64;
    let mut poll_errors = [0u64; FAILS.len()];
    let mut samples: Vec<String> = Vec::new();
    let mut timed_out = 0u32;
    for n in 0..args.count {
        tokio::time::sleep(args.handoff_gap).await;
        let r = round(args, &target, &request, sup, &seen).await?;
        polls_total += r.polls.len() as u64;
        let mut ends: Vec<Duration> = Vec::new();
        let mut old = (0u32, None::<Duration>);
        for p in &r.polls {
            match &p.result {
                Ok(pid) => {
                    if r.new_at.is_none_or(|t| p.end <= t) {
                        ends.push(p.end);
                    }
                    if *pid == prev {
                        old.0 += 1;
                        old.1 = old.1.max(Some(p.end));
                    }
                }
                Err(f) => {
                    poll_errors[f.kind as usize] += 1;
                    if samples.len() < MAX_SAMPLES {
                        samples.push(format!(
                            "round {n}: {} in the poll started at +{:.3} ms: {}",
                            f.kind.name(),
                            p.start.as_secs_f64() * 1000.0,
                            f.detail
                        ));
                    }
                }
            }
        }
        ends.sort_unstable();
        gaps_us.extend(ends.windows(2).map(|w| us(w[1] - w[0])));
        match (r.new_at, r.new_pid) {
            (Some(at), Some(pid)) => {
                times_us.push(us(at));
                old_polls.push(old.0);
                if let Some(t) = old.1 {
                    old_last_us.push(us(t));
                }
                seen.insert(pid);
                prev = pid;
            }
            _ => {
                timed_out += 1;
                if samples.len() < MAX_SAMPLES {
                    samples.push(format!(
                        "round {n}: no new pid within {:?} (last seen: {prev})",
                        args.timeout
                    ));
                }
                // Go on from whatever serves now.
                if let Ok(p) = get_pid_timed(&target, &request, args.timeout).await {
                    seen.insert(p);
                    prev = p;
                }
            }
        }
    }
    let mut sorted = times_us.clone();
    sorted.sort_unstable();
    old_last_us.sort_unstable();
    old_polls.sort_unstable();
    gaps_us.sort_unstable();
    let errors: u64 = poll_errors.iter().sum();
    let mut fails = serde_json::Map::new();
    for (k, n) in FAILS.iter().zip(poll_errors) {
        fails.insert(k.name().into(), n.into());
    }
    let out = json!({
        "url": args.url,
        "restart_pid": sup.as_raw_nonzero().get(),
        "rounds": args.count,
        "pollers": args.pollers,
        "poll_pause_us": us(args.poll_pause),
        "measured": sorted.len(),
        "timed_out": timed_out,
        "polls": polls_total,
        "poll_failures": fails,
        "min_us": sorted.first(),
        "median_us": percentile(&sorted, 0.5),
        "p90_us": percentile(&sorted, 0.9),
        "max_us": sorted.last(),
        "poll_gap_median_us": percentile(&gaps_us, 0.5),
        "poll_gap_p90_us": percentile(&gaps_us, 0.9),
        "old_last_answer_median_us": percentile(&old_last_us, 0.5),
        "old_last_answer_p90_us": percentile(&old_last_us, 0.9),
        "old_answers_median": percentile(&old_polls, 0.5),
        "handoffs_us": times_us,
        "notes": samples,
    });
    emit_json(args, &out)?;
    if !args.json {
        println!(
            "handoff: {} rounds, SIGUSR1 to {} then GET {} on fresh connections from {} pollers \
             (pause between polls: {:?}) until a new pid answers",
            args.count,
            sup.as_raw_nonzero(),
            args.url,
            args.pollers,
            args.poll_pause
        );
        println!(
            "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "measured", "timeout", "min ms", "median", "p90 ms", "max ms", "polls", "poll errs"
        );
        println!(
            "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            sorted.len(),
            timed_out,
            ms(sorted.first().copied()),
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.9)),
            ms(sorted.last().copied()),
            polls_total,
            errors
        );
        println!(
            "probe resolution (gap between answers): median {} us, p90 {} us; the old worker's \
             last answer after t0: median {} ms, p90 {} ms ({} answers, median)",
            percentile(&gaps_us, 0.5).unwrap_or(0),
            percentile(&gaps_us, 0.9).unwrap_or(0),
            ms(percentile(&old_last_us, 0.5)),
            ms(percentile(&old_last_us, 0.9)),
            percentile(&old_polls, 0.5).unwrap_or(0),
        );
        for s in &samples {
            println!("  {s}");
        }
    }
    Ok(timed_out == 0 && errors == 0)
}
