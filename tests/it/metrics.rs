//! `/metrics` against the real binary, read with a real Prometheus parser (`prometheus-parse`):
//! request counts that are the host's across restarts (a slow request finishing on a draining
//! worker included) and never go back between scrapes, restarts by trigger and outcome (ok,
//! failed, refused), OpenMetrics when asked, the admin `{path}/metrics`, and `check`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use rustix::process::Signal;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

fn config(port: u16) -> String {
    format!(
        "graceful: true\n\
         shutdown_timeout: 10s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  \
           web:\n    \
             address: \"127.0.0.1:{port}\"\n    \
             admin: {{ path: /debug/admin }}\n    \
             routes:\n      \
               \"/\": hello\n      \
               \"/pid\": pid\n      \
               \"/slow\": {{ handler: sleep, duration: 1500ms }}\n      \
               \"/metrics\": metrics\n"
    )
}

/// `GET path` with `headers`; the response and its body parsed as Prometheus text.
fn scrape_with(port: u16, path: &str, headers: &[(&str, &str)]) -> (Resp, Scrape) {
    let r = request(port, "GET", path, headers, b"").expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let text = r.body_str();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    (r, parsed)
}

fn scrape(port: u16) -> Scrape {
    let (r, s) = scrape_with(port, "/metrics", &[]);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    s
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => *n,
        other => panic!("not a single value: {other:?}"),
    }
}

/// The samples of `metric` whose labels include `labels`, added up.
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| value(&x.value))
        .sum()
}

/// Every counter sample, keyed by its name and labels.
fn counters(s: &Scrape) -> BTreeMap<String, f64> {
    s.samples
        .iter()
        .filter(|x| matches!(x.value, Value::Counter(_)))
        .map(|x| {
            let mut labels: Vec<_> = x.labels.iter().collect();
            labels.sort();
            (format!("{}{labels:?}", x.metric), value(&x.value))
        })
        .collect()
}

/// Scrapes, checking that no counter ever goes back or disappears.
struct Watcher {
    port: u16,
    last: BTreeMap<String, f64>,
}

impl Watcher {
    fn scrape(&mut self) -> Scrape {
        let s = scrape(self.port);
        let now = counters(&s);
        for (k, v) in &self.last {
            let n = now.get(k).copied();
            assert!(n.is_some_and(|n| n >= *v), "{k} went from {v} to {n:?}");
        }
        self.last = now;
        s
    }

    /// Scrape until `route` has counted `n` requests answered 200 (and check it never passes).
    fn wait_for(&mut self, route: &str, n: f64) -> Scrape {
        wait_until(T, &format!("{n} requests counted for {route}"), || {
            let s = self.scrape();
            let got = sum(&s, "apphost_http_requests_total", &[("route", route)]);
            assert!(got <= n, "{route}: {got} counted, {n} sent");
            (got == n).then_some(s)
        })
    }
}

fn hello(port: u16, n: usize) {
    for _ in 0..n {
        assert_eq!(get(port, "/").status, 200);
    }
}

#[test]
fn requests_are_counted_once_across_restarts_and_never_go_back() {
    let port = free_port();
    let host = crate::admin::start(&config(port));
    let first = host.wait_serving(port);
    let mut w = Watcher {
        port,
        last: BTreeMap::new(),
    };
    hello(port, 5);
    w.wait_for("/", 5.0);

    // A slow request in flight across the restart: it finishes on the draining worker.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(T)).unwrap();
    write!(
        slow,
        "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut slow = BufReader::new(slow);
    let mut line = String::new();
    while line != format!("{first}\n") {
        line.clear();
        assert!(slow.read_line(&mut line).unwrap() > 0, "slow answer cut");
    }
    let s = w.scrape();
    assert!(sum(&s, "apphost_http_requests_in_flight", &[("server", "web")]) >= 2.0);

    host.signal(Signal::USR1);
    host.wait_log_count("restart done", 1, T);
    let second = wait_until(T, "the new worker", || {
        let p: u32 = get(port, "/pid").body_str().trim().parse().unwrap();
        (p != first).then_some(p)
    });
    hello(port, 5);
    w.scrape();

    let out = cli(&host, &["restart"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    hello(port, 5);
    w.scrape();

    // The slow request ends on the first worker, now draining.
    let mut rest = String::new();
    slow.read_to_string(&mut rest).unwrap();
    assert!(rest.contains(&format!("{first}\n")), "{rest:?}");

    // A failed restart (the new process exits at once) and a refused one (no such file).
    let out = cli(&host, &["restart", "--exe", "/bin/false"]);
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let out = cli(&host, &["restart", "--exe", "/nonexistent/apphost"]);
    assert_eq!(out.code(), Some(1), "{}", out.stdout);

    // Every request counted once: the first worker's (the slow one too) and the second's,
    // both exited or draining, and the third's; whichever the scrape reached.
    wait_until(T, "the old workers to exit", || {
        (!process_alive(first) && !process_alive(second)).then_some(())
    });
    w.wait_for("/", 15.0);
    let s = w.wait_for("/slow", 1.0);
    assert_eq!(
        sum(
            &s,
            "apphost_http_requests_total",
            &[("route", "/"), ("method", "GET"), ("status", "200")]
        ),
        15.0
    );
    let count = |name, labels: &[(&str, &str)]| sum(&s, name, labels);
    let hist = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "apphost_http_request_duration_seconds"
                && x.labels.get("route") == Some("/slow")
        })
        .expect("a duration histogram for /slow");
    let Value::Histogram(buckets) = &hist.value else {
        panic!("{:?}", hist.value)
    };
    // 1.5 s: above the 1 s bucket, within 2.5 s.
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
    assert_eq!((at(1.0), at(2.5)), (0.0, 1.0), "{buckets:?}");

    let restarts = "apphost_restarts_total";
    assert_eq!(
        count(restarts, &[("trigger", "signal"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        count(restarts, &[("trigger", "cli"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        count(restarts, &[("trigger", "cli"), ("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        count(restarts, &[("trigger", "cli"), ("outcome", "refused")]),
        1.0
    );
    assert_eq!(count("apphost_generation", &[]), 3.0);
    assert!(count("apphost_last_handoff_seconds", &[]) > 0.0);
    assert_eq!(
        count("apphost_worker_starts_total", &[("reason", "start")]),
        1.0
    );
    assert!(
        count(
            "apphost_process_resident_memory_bytes",
            &[("process", "workers")]
        ) > 0.0
    );
    assert!(
        count(
            "apphost_process_resident_memory_bytes",
            &[("process", "supervisor")]
        ) > 0.0
    );
}

#[test]
fn openmetrics_when_asked_and_the_admin_metrics_route() {
    let port = free_port();
    let host = crate::admin::start(&config(port));
    host.wait_serving(port);
    hello(port, 3);
    let accept = ("Accept", "application/openmetrics-text; version=1.0.0");
    let counted = wait_until(T, "3 requests counted", || {
        let (r, s) = scrape_with(port, "/metrics", &[accept]);
        let n = sum(&s, "apphost_http_requests_total", &[("route", "/")]);
        (n == 3.0).then_some(r)
    });
    assert_eq!(
        counted.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = counted.body_str();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE apphost_http_requests counter\n"),
        "{text}"
    );
    assert!(text.contains("# UNIT apphost_http_request_duration_seconds seconds\n"));

    // The admin route answers the same metrics (loopback, no token: let in).
    let (r, s) = scrape_with(port, "/debug/admin/metrics", &[]);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        sum(&s, "apphost_http_requests_total", &[("route", "/")]),
        3.0
    );
    assert_eq!(sum(&s, "apphost_generation", &[]), 1.0);
    let post = request(port, "POST", "/debug/admin/metrics", &[], b"").unwrap();
    assert_eq!(post.status, 405);
}

#[test]
fn check_accepts_the_metrics_handler_and_rejects_unknown_params() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, config(free_port())).unwrap();
    let f = file.to_str().unwrap();
    let out = run_cli(dir.path(), &["check", "-c", f], &[], T);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("route /metrics -> metrics"),
        "{}",
        out.stdout
    );
    let bad = config(free_port()).replace(
        "\"/metrics\": metrics",
        "\"/metrics\": { handler: metrics, every: 5s }",
    );
    std::fs::write(&file, bad).unwrap();
    let out = run_cli(dir.path(), &["check", "-c", f], &[], T);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("server.yaml:12:") && out.stderr.contains("every"),
        "{}",
        out.stderr
    );
}

/// `apphost ARGS -c CONFIG` with the host's `XDG_RUNTIME_DIR` (see `admin::start`).
fn cli(host: &Apphost, args: &[&str]) -> CmdOutput {
    let config = host.config.to_str().unwrap().to_string();
    let run = host.dir.path().join("run");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", &config]);
    run_cli(
        host.dir.path(),
        &all,
        &[("XDG_RUNTIME_DIR", run.to_str().unwrap())],
        T,
    )
}

/// A worker killed outright (SIGKILL, the OOM killer) cannot report its last counts: it reports
/// them every second anyway, so what it counted before its last report is kept, with no scrape
/// in between to have asked for it.
#[test]
fn a_killed_worker_keeps_what_it_counted_up_to_its_last_report() {
    let port = free_port();
    let host = crate::admin::start_with_env(
        &config(port),
        &[("APPHOST_LOG", "info,apphost::worker::relay=debug")],
    );
    let first = host.wait_serving(port);
    hello(port, 20);
    // (`/pid` of `wait_serving` counts too.)
    host.wait_log("counts reported requests=21");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    crate::harness::wait_gone(first, T, "the killed worker");
    let second = crate::harness::wait_new_pid(&host, port, first);
    assert_ne!(second, first);
    let s = scrape(port);
    assert_eq!(
        sum(&s, "apphost_http_requests_total", &[("route", "/")]),
        20.0
    );
}
