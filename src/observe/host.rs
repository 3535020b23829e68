//! The supervisor's side of the host-wide counters (see the module doc of [`super`] for the
//! whole design): the latest counts of each live worker, the sum of the exited ones', and the
//! host's memory and CPU read from `/proc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tally::{Counts, HostMetrics, Processes, RestartStats};

/// The host's request counters, kept by the supervisor. A plain serializable struct: a
/// supervisor re-executing itself can hand it to its new image as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostTotals {
    /// Each live worker's latest report, by the supervisor's worker id.
    live: BTreeMap<u64, Counts>,
    /// The sum of the last reports of the workers that have exited (counters only).
    retired: Counts,
}

impl HostTotals {
    /// Worker `worker` reported its counts (cumulative since its start): they replace its
    /// previous report.
    pub(crate) fn report(&mut self, worker: u64, counts: Counts) {
        self.live.insert(worker, counts);
    }

    /// Worker `worker` has exited and its channel has been read to the end: its last report
    /// is final.
    pub(crate) fn retire(&mut self, worker: u64) {
        if let Some(last) = self.live.remove(&worker) {
            self.retired.add(&last, false);
        }
    }

    /// The host's counts: the retired workers' and every live worker's latest, with the live
    /// workers' gauges.
    pub(crate) fn counts(&self) -> Counts {
        let mut total = self.retired.clone();
        for c in self.live.values() {
            total.add(c, true);
        }
        total
    }

    /// Everything a scrape shows: the counts, and the supervisor's facts.
    pub(crate) fn metrics(
        &self,
        generation: u64,
        restarts: &RestartStats,
        worker_pids: impl Iterator<Item = u32>,
    ) -> HostMetrics {
        HostMetrics {
            counts: self.counts(),
            generation,
            restarts: restarts.clone(),
            processes: Some(processes(worker_pids)),
        }
    }
}

/// Memory and CPU: the supervisor's own (`/proc/self/stat`); the live workers' resident memory
/// added up; and the CPU of every worker ever run: the supervisor's reaped children's
/// (`cutime + cstime`, the kernel keeps them) plus the live workers' own. A worker that has
/// exited but is not yet reaped still has its `/proc` entry, and one that is reaped is in the
/// children's times: none is counted twice or missed, so the CPU counter never goes back.
fn processes(worker_pids: impl Iterator<Item = u32>) -> Processes {
    let tick = rustix::param::clock_ticks_per_second().max(1) as f64;
    let page = rustix::param::page_size() as u64;
    let me = read_stat("self").unwrap_or_default();
    let mut p = Processes {
        supervisor_rss: me.rss_pages * page,
        supervisor_cpu_s: (me.utime + me.stime) as f64 / tick,
        workers_rss: 0,
        workers_cpu_s: (me.cutime + me.cstime) as f64 / tick,
    };
    for pid in worker_pids {
        if let Some(s) = read_stat(&pid.to_string()) {
            p.workers_rss += s.rss_pages * page;
            p.workers_cpu_s += (s.utime + s.stime) as f64 / tick;
        }
    }
    p
}

/// The fields of `/proc/PID/stat` used here (clock ticks; pages).
#[derive(Debug, Default, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    rss_pages: u64,
}

fn read_stat(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parse `/proc/PID/stat` (proc(5)): the command name is in parentheses and may hold spaces
/// and parentheses itself, so fields are counted from the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0 here, so field N is index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |field: usize| f.get(field - 3).and_then(|v| v.parse::<i64>().ok());
    Some(Stat {
        utime: n(14)?.max(0) as u64,
        stime: n(15)?.max(0) as u64,
        cutime: n(16)?.max(0) as u64,
        cstime: n(17)?.max(0) as u64,
        rss_pages: n(24)?.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u64) -> Counts {
        let mut c = Counts::default();
        c.requests
            .insert(("s".into(), "/".into(), "GET".into(), 200), n);
        c.in_flight.insert("s".into(), 1);
        c
    }

    fn total(t: &HostTotals) -> u64 {
        t.counts().requests.values().sum()
    }

    #[test]
    fn a_retired_worker_is_counted_once_and_never_backwards() {
        let mut t = HostTotals::default();
        t.report(1, counts(5));
        t.report(2, counts(1));
        assert_eq!(total(&t), 6);
        // Worker 1 drains: a later report replaces the earlier one.
        t.report(1, counts(7));
        assert_eq!(total(&t), 8);
        t.retire(1);
        assert_eq!(total(&t), 8);
        assert_eq!(t.counts().in_flight["s"], 1, "only live gauges");
        t.retire(1);
        assert_eq!(total(&t), 8, "retired once");
        let json = serde_json::to_string(&t).unwrap();
        let back: HostTotals = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn proc_stat_is_read_after_the_last_parenthesis() {
        let line = "42 (a) b) (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23\n";
        let s = parse_stat(line).unwrap();
        // Fields 14-17 are the 12th to 15th numbers after the state; 24 the 22nd.
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (11, 12, 13, 14));
        assert_eq!(s.rss_pages, 21);
        let me = read_stat("self").unwrap();
        assert!(me.rss_pages > 0);
    }
}
