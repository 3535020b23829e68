//! [`HostMetrics`] as Prometheus text (0.0.4) or OpenMetrics, through `prometheus_client`: one
//! `Collector` encodes every family from the snapshot at scrape time. The names and labels are
//! the README's "Metrics" section.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::tally::{DURATION_BUCKETS, HostMetrics};

/// The OpenMetrics content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Render `m`: OpenMetrics when `openmetrics`, else the Prometheus text format. The text and
/// its content type.
pub(super) fn render(m: &HostMetrics, openmetrics: bool) -> (String, &'static str) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(m.clone())));
    let mut out = String::new();
    // Writing to a String does not fail; a collector error would be a bug in this file.
    let r = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    if let Err(e) = r {
        tracing::error!("cannot encode the metrics: {e}");
    }
    if openmetrics {
        (out, OPENMETRICS)
    } else {
        (
            out,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    }
}

#[derive(Debug)]
struct Snapshot(HostMetrics);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let c = &m.counts;

        let mut f = enc.encode_descriptor(
            "apphost_http_requests",
            "Requests finished, by server, route pattern (as written in the config; (none) when no route matched), method and status, across every generation.",
            None,
            MetricType::Counter,
        )?;
        for ((server, route, method, status), n) in &c.requests {
            let status = status.to_string();
            let labels = [
                ("server", server.as_str()),
                ("route", route.as_str()),
                ("method", method.as_str()),
                ("status", status.as_str()),
            ];
            f.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let mut f = enc.encode_descriptor(
            "apphost_http_request_duration",
            "Time from a request's head to the end of its response body, by server and route pattern.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((server, route), h) in &c.durations {
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets.iter().copied())
                .collect();
            let labels = [("server", server.as_str()), ("route", route.as_str())];
            f.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_ns as f64 / 1e9,
                h.count(),
                &buckets,
                None,
            )?;
        }

        let mut f = enc.encode_descriptor(
            "apphost_http_requests_in_flight",
            "Requests whose response has not ended, by server, in every live worker.",
            None,
            MetricType::Gauge,
        )?;
        for (server, n) in &c.in_flight {
            f.encode_family(&[("server", server.as_str())])?
                .encode_gauge(n)?;
        }

        let mut f = enc.encode_descriptor(
            "apphost_http_connections",
            "Open client connections, by server and protocol (http1, http2), in every live worker.",
            None,
            MetricType::Gauge,
        )?;
        for ((server, protocol), n) in &c.connections {
            f.encode_family(&[("server", server.as_str()), ("protocol", protocol.as_str())])?
                .encode_gauge(n)?;
        }

        let r = &m.restarts;
        let mut f = enc.encode_descriptor(
            "apphost_restarts",
            "Restarts by trigger (what asked) and outcome (ok, failed, refused).",
            None,
            MetricType::Counter,
        )?;
        for ((trigger, outcome), n) in &r.restarts {
            f.encode_family(&[("trigger", trigger.as_str()), ("outcome", outcome.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let f = enc.encode_descriptor(
            "apphost_generation",
            "The serving generation's number.",
            None,
            MetricType::Gauge,
        )?;
        gauge(f, m.generation)?;

        if let Some(s) = r.last_handoff_s {
            let f = enc.encode_descriptor(
                "apphost_last_handoff",
                "The last successful restart: from the request to the new generation ready.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            gauge(f, s)?;
        }

        let mut f = enc.encode_descriptor(
            "apphost_worker_starts",
            "Worker processes started, by reason (start, restart, recovery, standby).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &r.worker_starts {
            f.encode_family(&[("reason", reason.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        if let Some(p) = &m.processes {
            let mut f = enc.encode_descriptor(
                "apphost_process_resident_memory",
                "Resident memory of the supervisor, and of the live workers together.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for (who, v) in [("supervisor", p.supervisor_rss), ("workers", p.workers_rss)] {
                f.encode_family(&[("process", who)])?.encode_gauge(&v)?;
            }
            let mut f = enc.encode_descriptor(
                "apphost_process_cpu",
                "CPU time (user and system) of the supervisor, and of every worker the host has run.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for (who, v) in [
                ("supervisor", p.supervisor_cpu_s),
                ("workers", p.workers_cpu_s),
            ] {
                f.encode_family(&[("process", who)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}

/// Encode one unlabelled gauge value.
fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    mut f: prometheus_client::encoding::MetricEncoder<'_>,
    v: V,
) -> Result<(), std::fmt::Error> {
    f.encode_gauge(&v)
}
