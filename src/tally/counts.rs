//! Snapshots that travel: a worker's [`Counts`] (to the supervisor, in the channel's `counts`
//! message), the supervisor's restart record ([`RestartStats`]) and the host's whole view
//! ([`HostMetrics`], the answer to a worker's `metrics` request). Plain serializable structs, so
//! the supervisor can also hand its totals to its own re-executed image one day.
//!
//! Maps keyed by label tuples travel as lists of `[key, value]` pairs (JSON object keys must be
//! strings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `(server, route, method, status)`.
pub(crate) type RequestKey = (String, String, String, u16);
/// `(server, route)`.
pub(crate) type RouteKey = (String, String);

/// Request counters and gauges: one worker's since it started, or the host's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Finished requests.
    #[serde(with = "entries", default)]
    pub requests: BTreeMap<RequestKey, u64>,
    /// Request durations.
    #[serde(with = "entries", default)]
    pub durations: BTreeMap<RouteKey, Histogram>,
    /// Requests in flight, by server (a gauge).
    #[serde(with = "entries", default)]
    pub in_flight: BTreeMap<String, u64>,
    /// Live connections by `(server, protocol)` (a gauge).
    #[serde(with = "entries", default)]
    pub connections: BTreeMap<(String, String), u64>,
}

/// A duration histogram: counts per bucket of [`super::DURATION_BUCKETS`] (not cumulative; one
/// more for `+Inf`) and the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Histogram {
    /// Per bucket.
    pub buckets: Vec<u64>,
    /// The sum of the durations, in nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// Add `other`'s observations.
    pub(crate) fn add(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }

    /// The number of observations.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Counts {
    /// Add `other`'s counters, and its gauges when `gauges` (a retired worker's gauges are
    /// history, not the present).
    pub(crate) fn add(&mut self, other: &Counts, gauges: bool) {
        for (k, n) in &other.requests {
            *self.requests.entry(k.clone()).or_default() += n;
        }
        for (k, h) in &other.durations {
            self.durations.entry(k.clone()).or_default().add(h);
        }
        if gauges {
            for (k, n) in &other.in_flight {
                *self.in_flight.entry(k.clone()).or_default() += n;
            }
            for (k, n) in &other.connections {
                *self.connections.entry(k.clone()).or_default() += n;
            }
        }
    }
}

/// The supervisor's record of restarts and worker starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RestartStats {
    /// Restarts by `(trigger, outcome)`; outcome `ok`, `failed` or `refused`.
    #[serde(with = "entries", default)]
    pub restarts: BTreeMap<(String, String), u64>,
    /// Worker processes started, by reason (`start`, `restart`, `recovery`, `standby`).
    #[serde(with = "entries", default)]
    pub worker_starts: BTreeMap<String, u64>,
    /// The last successful restart's handoff (request to the new generation ready), seconds.
    #[serde(default)]
    pub last_handoff_s: Option<f64>,
}

impl RestartStats {
    /// Count a restart's outcome.
    pub(crate) fn restart(&mut self, trigger: &str, outcome: &str) {
        *self
            .restarts
            .entry((trigger.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    /// Count a worker process started.
    pub(crate) fn worker_started(&mut self, reason: &str) {
        *self.worker_starts.entry(reason.to_string()).or_default() += 1;
    }
}

/// Memory and CPU of the host's processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Processes {
    /// The supervisor's resident memory, bytes.
    pub supervisor_rss: u64,
    /// The supervisor's CPU time (user + system), seconds.
    pub supervisor_cpu_s: f64,
    /// The live workers' resident memory together, bytes.
    pub workers_rss: u64,
    /// CPU time of every worker the host has run, live and exited (and of the supervisor's other
    /// children: preflight checks), seconds.
    pub workers_cpu_s: f64,
}

/// What the `metrics` handler renders: the host's counts and the supervisor's facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostMetrics {
    /// Every generation's requests (exited ones included) and the live workers' gauges.
    #[serde(default)]
    pub counts: Counts,
    /// The serving generation's number (0 when not known: a worker answering alone).
    #[serde(default)]
    pub generation: u64,
    /// Restarts and worker starts.
    #[serde(default)]
    pub restarts: RestartStats,
    /// Memory and CPU; `None` when not known (a worker answering alone).
    #[serde(default)]
    pub processes: Option<Processes>,
}

/// Serialize a map as a list of `[key, value]` pairs.
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cross_json_and_add_up() {
        let mut a = Counts::default();
        a.requests
            .insert(("s".into(), "/".into(), "GET".into(), 200), 3);
        a.durations.insert(
            ("s".into(), "/".into()),
            Histogram {
                buckets: vec![1, 2],
                sum_ns: 10,
            },
        );
        a.in_flight.insert("s".into(), 1);
        let json = serde_json::to_string(&a).unwrap();
        let back: Counts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let mut total = back.clone();
        total.add(&a, false);
        assert_eq!(
            total.requests[&("s".into(), "/".into(), "GET".into(), 200)],
            6
        );
        assert_eq!(total.durations[&("s".into(), "/".into())].count(), 6);
        assert_eq!(total.in_flight["s"], 1, "gauges not added");
        // A message from an older or newer peer with fields missing or unknown still reads.
        let partial: HostMetrics = serde_json::from_str(r#"{"generation":3,"x":1}"#).unwrap();
        assert_eq!(partial.generation, 3);
    }
}
