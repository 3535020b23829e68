//! Recycling: `recycle: { max_requests, max_memory, max_age, jitter }` replaces the serving
//! worker by a restart with trigger `recycle` once it passes one of them (gunicorn's
//! `max_requests`, PM2's `max_memory_restart`), through the one restart machine like any other
//! restart (`supervisor::machine`'s `recycle` part says when one may start, and how a failed
//! one is retried without a hot loop).
//!
//! Who watches what:
//! - **`max_requests`**: the worker counts the requests it starts (`serve::requests`, one
//!   relaxed atomic addition per request, only when set) and tells its supervisor once it has
//!   passed the limit (the channel's `recycle` message).
//! - **`max_age`** and **`max_memory`**: the supervisor looks once a second at the serving
//!   worker's age (since its ready report) and its resident memory (`/proc/PID/status`, read off
//!   the supervisor's loop). Memory is the worker process's own, not its children's.
//! - **`jitter`**: each worker raises its `max_requests` and `max_age` by a random part of them
//!   up to `jitter` (drawn once, when it starts), so hosts started together do not all recycle
//!   at once; `max_memory` is a ceiling and is not moved.
//!
//! This module holds the parts both sides share: the worker's limits with its jitter
//! ([`for_worker`]) and the supervisor's decision ([`due`]), unit-tested here.

use std::time::Duration;

use crate::channel::RecycleSettings;
use crate::config::RecycleConfig;

/// A random fraction in `[0, 1)`, from the standard library's randomly keyed hasher (no
/// dependency for something that only spreads timings).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A worker's limits from `recycle`, with `draw` (in `[0, 1)`) of its jitter applied: the
/// `max_requests` it counts to, and what it reports to the supervisor.
fn with_draw(cfg: &RecycleConfig, draw: f64) -> (Option<u64>, RecycleSettings) {
    let factor = 1.0 + cfg.jitter.clamp(0.0, 1.0) * draw;
    let max_requests = cfg.max_requests.map(|n| (n as f64 * factor).round() as u64);
    let settings = RecycleSettings {
        max_age_ms: cfg
            .max_age
            .map(|a| (a.as_millis() as f64 * factor).round() as u64),
        max_memory: cfg.max_memory,
        max_requests,
    };
    (max_requests, settings)
}

/// What a worker with `recycle` counts to and reports (its jitter drawn now); `None` without it.
pub(crate) fn for_worker(cfg: Option<&RecycleConfig>) -> (Option<u64>, Option<RecycleSettings>) {
    match cfg {
        Some(c) => {
            let (n, s) = with_draw(c, random_fraction());
            (n, Some(s))
        }
        None => (None, None),
    }
}

/// Whether the serving worker is due for recycling by its age or memory: the reason, for the
/// log and the restart's record, or `None`.
pub(crate) fn due(limits: &RecycleSettings, age: Duration, rss: Option<u64>) -> Option<String> {
    if let Some(max) = limits.max_age_ms
        && age.as_millis() >= u128::from(max)
    {
        return Some(format!(
            "max_age: it has served {} (limit {})",
            fmt_ms(age.as_millis() as u64),
            fmt_ms(max)
        ));
    }
    if let (Some(max), Some(rss)) = (limits.max_memory, rss)
        && rss > max
    {
        return Some(format!(
            "max_memory: it holds {} resident (limit {})",
            mib(rss),
            mib(max)
        ));
    }
    None
}

/// The reason a worker gives when it has passed `max_requests`.
pub(crate) fn requests_reason(served: u64, limit: u64) -> String {
    format!("max_requests: it has started {served} requests (limit {limit})")
}

fn fmt_ms(ms: u64) -> String {
    crate::config::duration::format_duration(Duration::from_millis(ms))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Resident memory of process `pid` in bytes, from the `VmRSS` line of `/proc/PID/status`.
/// `None` if it cannot be read (the process is gone).
pub(crate) async fn resident_bytes(pid: u32) -> Option<u64> {
    let text = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: f64) -> RecycleConfig {
        RecycleConfig {
            max_requests: Some(1000),
            max_memory: Some(512 << 20),
            max_age: Some(Duration::from_secs(3600)),
            jitter,
        }
    }

    #[test]
    fn jitter_raises_requests_and_age_but_not_memory() {
        let (n, s) = with_draw(&cfg(0.1), 0.0);
        assert_eq!(n, Some(1000));
        assert_eq!(s.max_age_ms, Some(3_600_000));
        let (n, s) = with_draw(&cfg(0.1), 0.5);
        assert_eq!(n, Some(1050));
        assert_eq!(s.max_age_ms, Some(3_780_000));
        assert_eq!(s.max_memory, Some(512 << 20));
        let (n, _) = with_draw(&cfg(0.0), 0.9);
        assert_eq!(n, Some(1000), "no jitter, no change");
        let f = random_fraction();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn due_by_age_or_memory() {
        let (_, s) = with_draw(&cfg(0.0), 0.0);
        assert_eq!(due(&s, Duration::from_secs(10), Some(1 << 20)), None);
        assert_eq!(due(&s, Duration::from_secs(10), None), None);
        let by_age = due(&s, Duration::from_secs(3600), Some(1 << 20)).unwrap();
        assert!(by_age.starts_with("max_age"), "{by_age}");
        let by_mem = due(&s, Duration::from_secs(10), Some(600 << 20)).unwrap();
        assert_eq!(
            by_mem,
            "max_memory: it holds 600.0 MiB resident (limit 512.0 MiB)"
        );
        // Exactly at the ceiling is not over it.
        assert_eq!(due(&s, Duration::from_secs(10), Some(512 << 20)), None);
        let none = RecycleSettings::default();
        assert_eq!(due(&none, Duration::MAX, Some(u64::MAX)), None);
    }

    #[test]
    fn status_gives_resident_memory() {
        let status = "Name:\tapphost\nVmPeak:\t  20000 kB\nVmRSS:\t    1500 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1500 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkworker\n"), None);
    }
}
