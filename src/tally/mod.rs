//! The host's request counters as plain data: what a worker counts while it serves
//! ([`WorkerTally`], [`RouteTally`]: atomics, written on the request path) and what travels
//! between processes ([`Counts`], [`HostMetrics`]: serializable snapshots; see `counts`).
//!
//! This is base vocabulary: the route table gives each route a [`RouteTally`], the serving
//! layer's one recording point (`serve::exchange`) hands each finished request to
//! `observe::Count`, which records it there, the worker reports [`Counts`] to the supervisor
//! over the channel, the supervisor adds them up (`observe::host`), and the `metrics` handler
//! (`observe`) renders them. Nothing here knows
//! about Prometheus.
//!
//! A worker counts only when its config asks for metrics (a `metrics` route, or `admin:`
//! somewhere): otherwise the route table has no tallies and the request path skips all of it
//! with one branch.
//!
//! Cost per request when on: one `OnceLock` load, three relaxed atomic additions (the
//! `(method, status)` slot, the duration bucket, the duration sum), and the recording's two
//! monotonic clock reads (`serve::exchange`). Slots are per `(route, method)` and allocated on first use: 900 counters, one
//! per status code HTTP allows (100–999).

mod counts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use http::Method;

pub(crate) use counts::{Counts, HostMetrics, Processes, RestartStats};

/// The `method` label values: the standard methods, then `other` for any extension method (a
/// client cannot grow the label set by sending made-up methods).
pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The `route` label of requests no route matched (answered `404`).
pub(crate) const UNMATCHED: &str = "(none)";

/// Upper bounds of the request-duration histogram's buckets, in seconds (Prometheus' default
/// buckets); a last `+Inf` bucket follows.
pub(crate) const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`DURATION_BUCKETS`] in nanoseconds, for the request path's comparisons.
const BUCKETS_NS: [u64; 11] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Status codes HTTP allows: 100–999.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 900;

/// The index of `m` in [`METHODS`].
#[inline]
pub(crate) fn method_index(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// One route's counters: requests by method and status, and the duration histogram.
#[derive(Debug)]
pub(crate) struct RouteTally {
    /// The `route` label: the pattern as written in the config.
    pattern: Arc<str>,
    /// Per method (indexed as [`METHODS`]): a counter per status code, allocated on first use.
    requests: [OnceLock<Box<[AtomicU64]>>; METHODS.len()],
    /// Requests by duration bucket (not cumulative; the last is `+Inf`).
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum of the durations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl RouteTally {
    fn new(pattern: Arc<str>) -> RouteTally {
        RouteTally {
            pattern,
            requests: Default::default(),
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Count one finished request: `method` an index into [`METHODS`], `status` its code,
    /// `ns` from its head being read to its last byte written.
    #[inline]
    pub(crate) fn record(&self, method: u8, status: u16, ns: u64) {
        let slots = self.requests[usize::from(method).min(METHODS.len() - 1)]
            .get_or_init(|| (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect());
        let slot = usize::from(status.saturating_sub(STATUS_MIN)).min(STATUS_SLOTS - 1);
        slots[slot].fetch_add(1, Ordering::Relaxed);
        // (Most requests take less than the first bucket's bound: no search.)
        let b = if ns <= BUCKETS_NS[0] {
            0
        } else {
            BUCKETS_NS.partition_point(|&le| le < ns)
        };
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Add this route's counts to `out`, labelled with `server`.
    fn snapshot_into(&self, server: &str, out: &mut Counts) {
        for (m, slots) in self.requests.iter().enumerate() {
            let Some(slots) = slots.get() else { continue };
            for (i, c) in slots.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let key = (
                        server.to_string(),
                        self.pattern.to_string(),
                        METHODS[m].to_string(),
                        STATUS_MIN + i as u16,
                    );
                    *out.requests.entry(key).or_default() += n;
                }
            }
        }
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        if buckets.iter().any(|&n| n > 0) {
            let h = counts::Histogram {
                buckets,
                sum_ns: self.sum_ns.load(Ordering::Relaxed),
            };
            out.durations
                .entry((server.to_string(), self.pattern.to_string()))
                .or_default()
                .add(&h);
        }
    }
}

/// One server's tallies: one per route, and one for requests no route matched.
#[derive(Debug)]
pub(crate) struct ServerTally {
    name: Arc<str>,
    /// Its index among the worker's servers (connections carry it, see `serve::watchdog`).
    index: u16,
    routes: Mutex<Vec<Arc<RouteTally>>>,
    unmatched: Arc<RouteTally>,
}

impl ServerTally {
    /// A tally for a new route `pattern` (kept here for snapshots).
    pub(crate) fn route(&self, pattern: &Arc<str>) -> Arc<RouteTally> {
        let t = Arc::new(RouteTally::new(pattern.clone()));
        lock(&self.routes).push(t.clone());
        t
    }

    /// The tally of requests no route matched.
    pub(crate) fn unmatched(&self) -> &Arc<RouteTally> {
        &self.unmatched
    }

    /// Its index among the worker's servers.
    pub(crate) fn index(&self) -> u16 {
        self.index
    }
}

/// Everything one worker counts: a [`ServerTally`] per server, in config order.
#[derive(Debug, Default)]
pub(crate) struct WorkerTally {
    servers: Mutex<Vec<Arc<ServerTally>>>,
}

/// Per server (by index): live connections speaking HTTP/1 and HTTP/2, and requests in flight.
pub(crate) type Gauges = Vec<(u64, u64, u64)>;

impl WorkerTally {
    /// A tally for server `name`.
    pub(crate) fn server(&self, name: &str) -> Arc<ServerTally> {
        let mut servers = lock(&self.servers);
        let s = Arc::new(ServerTally {
            name: Arc::from(name),
            index: u16::try_from(servers.len()).unwrap_or(u16::MAX),
            routes: Mutex::new(Vec::new()),
            unmatched: Arc::new(RouteTally::new(Arc::from(UNMATCHED))),
        });
        servers.push(s.clone());
        s
    }

    /// This worker's counts since it started, with `gauges` (per server index, from the
    /// connection registry) as the in-flight and connection gauges.
    pub(crate) fn snapshot(&self, gauges: &Gauges) -> Counts {
        let mut out = Counts::default();
        for s in lock(&self.servers).iter() {
            for r in lock(&s.routes).iter() {
                r.snapshot_into(&s.name, &mut out);
            }
            s.unmatched.snapshot_into(&s.name, &mut out);
            let (h1, h2, busy) = gauges
                .get(usize::from(s.index))
                .copied()
                .unwrap_or_default();
            let name = s.name.to_string();
            *out.in_flight.entry(name.clone()).or_default() += busy;
            *out.connections
                .entry((name.clone(), "http1".into()))
                .or_default() += h1;
            *out.connections.entry((name, "http2".into())).or_default() += h2;
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_its_method_status_and_bucket() {
        let w = WorkerTally::default();
        let s = w.server("web");
        let r = s.route(&Arc::from("/api/*rest"));
        r.record(method_index(&Method::GET), 200, 3_000_000);
        r.record(method_index(&Method::GET), 200, 30_000_000);
        r.record(
            method_index(&Method::from_bytes(b"BREW").unwrap()),
            418,
            20_000_000_000,
        );
        s.unmatched().record(0, 404, 0);
        let c = w.snapshot(&vec![(2, 1, 1)]);
        let key = |route: &str, m: &str, st| ("web".to_string(), route.to_string(), m.into(), st);
        assert_eq!(c.requests[&key("/api/*rest", "GET", 200)], 2);
        assert_eq!(c.requests[&key("/api/*rest", "other", 418)], 1);
        assert_eq!(c.requests[&key(UNMATCHED, "GET", 404)], 1);
        let h = &c.durations[&("web".into(), "/api/*rest".into())];
        // 3 ms ≤ 5 ms; 30 ms ≤ 50 ms; 20 s only in +Inf.
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[3], 1);
        assert_eq!(h.buckets[DURATION_BUCKETS.len()], 1);
        assert_eq!(h.sum_ns, 20_033_000_000);
        assert_eq!(c.in_flight["web"], 1);
        assert_eq!(c.connections[&("web".into(), "http1".into())], 2);
        assert_eq!(c.connections[&("web".into(), "http2".into())], 1);
    }

    #[test]
    fn a_bound_is_inclusive_as_prometheus_le_is() {
        let w = WorkerTally::default();
        let r = w.server("s").route(&Arc::from("/"));
        r.record(0, 200, 5_000_000);
        let c = w.snapshot(&Vec::new());
        assert_eq!(c.durations[&("s".into(), "/".into())].buckets[0], 1);
    }
}
