//! Observing a host: what it did, for operators (the product layer's `observe` room).
//!
//! - [`access_log`]: each server's access log, one line per request, in the combined or JSON
//!   format; [`line`](mod@line) formats a line (its time from [`clock`], formatted once a second),
//!   [`sink`] buffers lines and writes them from a thread of its own (bounded; several
//!   generations append to one file without interleaving).
//! - [`request_id`]: the `x-request-id` each request gets (its own, if acceptable, or a new one).
//! - Metrics: the `metrics` handler (this file: Prometheus text, or OpenMetrics when asked),
//!   [`Count`] (the observer that counts each request), `render` (the text), [`host`] (the
//!   supervisor's host-wide totals and the processes' memory and CPU).
//!
//! What is observed comes from the one point where serving records a request, when its last
//! byte has been written: [`crate::serve::exchange`]. The types here implement its `Observer`
//! and the worker hands them down to each listener ([`both`]: one observer when a server has an
//! access log and metrics); serving never imports this module.
//!
//! # The crate
//! Rendering uses [`prometheus_client`], the Prometheus organisation's own Rust client: it
//! writes both the Prometheus text format (0.0.4, `encoding::prometheus_text`) and OpenMetrics
//! (`encoding::text`) from one registry, escapes label values, and its `Collector` encodes
//! values computed at scrape time, which is what apphost has (counts added up across processes,
//! not live metric objects). The `metrics` crate and its exporter assume a process-global
//! recorder and write only the Prometheus format.
//!
//! # Counters that are the host's, not one worker's (DESIGN property 9)
//! - **Counting.** A worker whose config asks for metrics (a route with the `metrics` handler, or
//!   `admin:` on any server: [`wanted`]) gives every route of every server a tally
//!   ([`crate::tally`]). Each request is recorded once, in that worker, when it finishes (its
//!   last byte written, or cut, or abandoned by its client: `serve::exchange`), by [`Count`]
//!   into its route's tally, which the route table gives the request's record. A worker's
//!   counts are cumulative from its start and only grow.
//! - **Reporting.** A worker sends its whole counts (not a delta) to the supervisor in a `counts`
//!   channel message: right before each scrape it serves, every second (serving or draining,
//!   when they changed since the report before), and a last time when its drain is over (every request it took has finished or been cut by
//!   `shutdown_timeout`), just before it exits. Its messages leave from one task, in order, so
//!   each report the supervisor keeps is at least the one before it.
//! - **Adding up.** The supervisor ([`host::HostTotals`], a plain serializable struct) keeps the
//!   latest report of each live worker, replacing the previous one, and the sum of the final
//!   reports of the workers that have exited (`retired`). When a worker has exited and its
//!   channel has been read to the end, its latest report moves from `live` to `retired`, in one
//!   step of the supervisor's loop: counted once, never twice, never dropped.
//! - **Scraping.** A scrape reaches a worker's `metrics` route (or the admin `{path}/metrics`).
//!   The worker sends its counts, then a `metrics_request`; the supervisor answers with
//!   `retired` plus every live worker's latest report (the asker's is the one it just sent),
//!   plus its own facts: restarts by trigger and outcome, worker starts, the generation, the
//!   last handoff, memory and CPU. A request that finished on a draining worker is in that
//!   worker's next report (within a second) and in its final one.
//! - **Never backwards.** Every term of the sum only grows: a live worker's reports grow, and a
//!   worker's last report moves into `retired` unchanged (its final report is at least every
//!   earlier one). So successive scrapes never see a counter go down, whichever worker answers.
//!
//! What is lost: a worker killed (SIGKILL, the OOM killer, a crash) loses what it counted since
//! its last report — at most a second's worth, since every worker reports every second when its
//! counts changed, serving or draining, not only before a scrape — and requests cut by `shutdown_timeout` (they finish as the worker's runtime stops,
//! after its final report) are not counted. A request whose client left before the answer is
//! counted with status 499, as the access log writes it. Gauges
//! (in flight, connections) are the live workers' latest reports. If the supervisor does not
//! answer (an older supervisor after a binary upgrade does not know `metrics_request`), the
//! worker answers from its own counts alone after [`SUPERVISOR_WAIT`].
//!
//! The request path pays nothing when metrics are not configured (no observer: one branch per
//! request); with metrics, what recording a request costs (`serve::exchange`) and three atomic
//! additions (see `crate::tally`).

pub(crate) mod access_log;
mod clock;
pub(crate) mod host;
pub(crate) mod line;
mod render;
pub(crate) mod request_id;
pub(crate) mod sink;

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};

use crate::body::Body;
use crate::config::{Config, ConfigError, Params};
use crate::handler::{BoxFuture, Factory, Handler, Response, Wants, text};
use crate::handlers::{Builtin, MethodPolicy, Respond};
use crate::ops::Link;
use crate::serve::exchange::{Exchange, Observer};
use crate::tally::HostMetrics;
use access_log::AccessLog;

/// The built-in handler's registered name.
pub(crate) const HANDLER_NAME: &str = "metrics";

/// How long a scrape waits for the supervisor's answer before answering from the worker's own
/// counts.
pub(crate) const SUPERVISOR_WAIT: Duration = Duration::from_secs(2);

/// True when `config` asks for metrics: a route with the `metrics` handler, or admin routes
/// (which answer `{path}/metrics`).
pub(crate) fn wanted(config: &Config) -> bool {
    config
        .servers
        .iter()
        .any(|s| s.admin.is_some() || s.routes.iter().any(|r| r.handler == HANDLER_NAME))
}

/// The `metrics` handler's factory: no params (but `methods`). `link` is the worker's way to
/// its supervisor and its counts (`None` outside a worker, for `apphost check`: it then answers
/// 503).
pub(crate) fn factory(link: Option<Link>) -> Factory {
    Arc::new(
        move |params: &Params| -> Result<Arc<dyn Handler>, ConfigError> {
            params.deny_unknown(&[])?;
            let h = Metrics { link: link.clone() };
            Ok(Arc::new(Builtin::new(h, MethodPolicy::from_params(params))))
        },
    )
}

/// The `metrics` handler.
struct Metrics {
    link: Option<Link>,
}

impl Respond for Metrics {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        let link = self.link.clone();
        Box::pin(async move { answer(link.as_ref(), &parts.method, &parts.headers).await })
    }

    fn wants(&self) -> Wants {
        Wants::NONE
    }
}

/// Answer a scrape: the host's metrics through `link` (the admin routes call this too), in the
/// format `headers` ask for.
pub(crate) async fn answer(
    link: Option<&Link>,
    method: &Method,
    headers: &http::HeaderMap,
) -> Response {
    let Some(link) = link else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 metrics are served by a running worker\n",
        );
    };
    let metrics = match link.metrics(SUPERVISOR_WAIT).await {
        Some(m) => m,
        None => {
            tracing::debug!("no answer from the supervisor; metrics of this worker only");
            HostMetrics {
                counts: link.counts(),
                generation: link.generation(),
                ..HostMetrics::default()
            }
        }
    };
    let openmetrics = headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("application/openmetrics-text"))
    });
    let (body, content_type) = render::render(&metrics, openmetrics);
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    let mut r = http::Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The observer that counts each finished request in its route's tally (set on the request's
/// record by the connection, from the route table).
#[derive(Debug)]
pub(crate) struct Count;

impl Observer for Count {
    fn started(&self, _uri: &http::Uri, _headers: &http::HeaderMap, _ex: &mut Exchange) {}

    fn finished(&self, ex: &Exchange) {
        count(ex);
    }
}

/// Count `ex` in its route's tally, if it has one (inlined in each observer that counts: one
/// call less per request).
#[inline(always)]
fn count(ex: &Exchange) {
    if let Some(t) = &ex.tally {
        t.record(
            crate::tally::method_index(&ex.method),
            ex.status.as_u16(),
            ex.duration_ns,
        );
    }
}

/// The observer of a server: its access log, the metrics' counting, both, or none. Both are one
/// observer ([`Counted`]), whose calls reach the access log and the count directly.
pub(crate) fn both(log: Option<Arc<AccessLog>>, count: bool) -> Option<Arc<dyn Observer>> {
    match (log, count) {
        (Some(log), true) => Some(Arc::new(Counted(log))),
        (Some(log), false) => Some(log),
        (None, true) => Some(Arc::new(Count)),
        (None, false) => None,
    }
}

/// An access log and the metrics' counting.
#[derive(Debug)]
struct Counted(Arc<AccessLog>);

impl Observer for Counted {
    fn started(&self, uri: &http::Uri, headers: &http::HeaderMap, ex: &mut Exchange) {
        self.0.started(uri, headers, ex);
    }

    fn finished(&self, ex: &Exchange) {
        self.0.finished(ex);
        count(ex);
    }
}
