//! The gRPC example (`examples/grpc_app/`: a tonic service hosted through `Host::service`) on
//! the real example binary, called by tonic's client (`tonic::client::Grpc` with prost
//! messages, over hyper-util's HTTP/2 pool: see `proto.rs`):
//! - unary and server-streaming calls, and a status that reaches the client in the response's
//!   trailers (after messages), through apphost's `Body`;
//! - calls under load across 50 graceful restarts: not one ends in an error;
//! - a server stream in flight at a restart completes on the old worker.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::axum::example_bin;
use crate::harness::{T, low_port, wait_gone, wait_log_n};
use crate::support::Apphost;

#[path = "../../examples/grpc_app/proto.rs"]
mod proto;
use proto::{CountRequest, DemoClient};

fn config(port: u16, graceful: bool) -> String {
    format!(
        "graceful: {graceful}\nshutdown_timeout: 20s\n\
         watch: {{ executable: false, config: false }}\n\
         servers:\n  grpc:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         \"/demo.Demo/*method\": demo\n      \"/pid\": pid\n"
    )
}

/// `grpc_app serve run -c DIR/server.yaml`, serving.
fn start(port: u16, graceful: bool) -> (Apphost, u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, config(port, graceful)).unwrap();
    let mut cmd = Command::new(example_bin("grpc_app"));
    cmd.args(["serve", "run", "-c"])
        .arg(&path)
        .current_dir(dir.path());
    let host = Apphost::spawn(cmd, dir, path);
    let pid = host.wait_serving(port);
    (host, pid)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every reply of a `Count` stream, and how it ended.
async fn drain(
    mut s: tonic::Streaming<proto::CountReply>,
) -> (Vec<proto::CountReply>, Result<(), tonic::Status>) {
    let mut got = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(r)) => got.push(r),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

#[test]
fn unary_and_server_streaming_calls_with_statuses_in_headers_and_trailers() {
    let port = low_port();
    let (host, worker) = start(port, true);
    let addr = format!("127.0.0.1:{port}");
    runtime().block_on(async {
        let mut c = DemoClient::new(&addr);
        let r = c.hello("ada").await.expect("Hello");
        assert_eq!((r.message.as_str(), r.pid), ("hello, ada", worker));
        // An error before any message: a trailers-only response (the status in the head).
        let e = c.hello("").await.expect_err("an empty name");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert_eq!(e.message(), "name is empty");

        let s = c
            .count(CountRequest {
                n: 3,
                interval_ms: 10,
                fail_at: 0,
            })
            .await
            .expect("Count");
        let (got, end) = drain(s).await;
        if let Err(e) = end {
            panic!("the stream's status, from its trailers, is not OK: {e:?}");
        }
        let ids: Vec<(u32, u32)> = got.iter().map(|r| (r.i, r.pid)).collect();
        assert_eq!(ids, [(1, worker), (2, worker), (3, worker)]);

        // A status after messages can only travel in the trailers.
        let s = c
            .count(CountRequest {
                n: 5,
                interval_ms: 10,
                fail_at: 3,
            })
            .await
            .expect("Count");
        let (got, end) = drain(s).await;
        assert_eq!(got.len(), 2, "{got:?}");
        let e = end.expect_err("the status in the trailers");
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        assert_eq!(e.message(), "failed at 3");
    });
    drop(host);
}

/// 16 tasks make `Hello` calls back to back on 4 connection pools while the supervisor makes 50
/// graceful restarts, one after the other: every call succeeds, and the calls reach the new
/// workers (the clients follow GOAWAY to new connections).
#[test]
fn a_tonic_client_under_load_sees_no_error_across_50_restarts() {
    let port = low_port();
    let (host, first) = start(port, true);
    let addr = format!("127.0.0.1:{port}");
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let pools: Vec<DemoClient> = (0..4).map(|_| DemoClient::new(&addr)).collect();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = pools[i % pools.len()].clone();
            let (stop, ok) = (stop.clone(), ok.clone());
            rt.spawn(async move {
                let mut errors = Vec::new();
                let mut pids = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.hello("load").await {
                        Ok(r) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            pids.insert(r.pid);
                        }
                        Err(e) => errors.push(describe(&e)),
                    }
                }
                (errors, pids)
            })
        })
        .collect();
    wait_until_calls(&ok, 100);
    for i in 1..=50 {
        host.signal(Signal::USR1);
        wait_log_n(&host, "restart done (graceful)", i);
    }
    // Calls after the last restart too.
    let after = ok.load(Ordering::Relaxed);
    wait_until_calls(&ok, after + 100);
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    let mut pids = std::collections::BTreeSet::new();
    for t in tasks {
        let (e, p) = rt.block_on(t).unwrap();
        errors.extend(e);
        pids.extend(p);
    }
    assert!(
        errors.is_empty(),
        "{} of {} calls failed, the first: {:?}",
        errors.len(),
        ok.load(Ordering::Relaxed) + errors.len() as u64,
        &errors[..errors.len().min(5)]
    );
    eprintln!(
        "{} calls, {} sent again by the transparent retry",
        ok.load(Ordering::Relaxed),
        proto::retried()
    );
    assert!(pids.contains(&first));
    assert!(
        pids.len() >= 10,
        "the calls reached only {} workers over 50 restarts",
        pids.len()
    );
    drop(host);
}

/// A status with its chain of sources.
fn describe(e: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", e.code(), e.message());
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(" <- {c}"));
        src = c.source();
    }
    s
}

fn wait_until_calls(ok: &AtomicU64, n: u64) {
    crate::support::wait_until(T, &format!("{n} calls answered"), || {
        (ok.load(Ordering::Relaxed) >= n).then_some(())
    });
}

/// A `Count` stream in flight when a graceful restart drains its worker goes on to its end on
/// that worker (every reply, then `OK`), while new calls go to the new worker; then the old
/// worker exits.
#[test]
fn a_server_stream_in_flight_at_a_restart_completes_on_the_old_worker() {
    let port = low_port();
    let (host, old) = start(port, true);
    let addr = format!("127.0.0.1:{port}");
    let rt = runtime();
    let mut c = DemoClient::new(&addr);
    let mut s = rt
        .block_on(c.count(CountRequest {
            n: 30,
            interval_ms: 200,
            fail_at: 0,
        }))
        .expect("Count");
    let first = rt.block_on(s.message()).expect("a reply").expect("a reply");
    assert_eq!((first.i, first.pid), (1, old));
    host.signal(Signal::USR1);
    // A new client (new connection) is answered by the new worker while the stream runs.
    let new = crate::support::wait_until(T, "the new worker to answer Hello", || {
        let r = rt.block_on(DemoClient::new(&addr).hello("new")).ok()?;
        (r.pid != old).then_some(r.pid)
    });
    let started = Instant::now();
    let (rest, end) = rt.block_on(drain(s));
    if let Err(e) = end {
        panic!("the stream ended with {e:?}");
    }
    let got: Vec<(u32, u32)> = rest.iter().map(|r| (r.i, r.pid)).collect();
    let want: Vec<(u32, u32)> = (2..=30).map(|i| (i, old)).collect();
    assert_eq!(got, want, "every reply, from the old worker");
    assert!(
        started.elapsed() > Duration::from_millis(200),
        "the stream was not still running when the new worker answered"
    );
    wait_gone(old, T, "the old worker, its stream done");
    let r = rt
        .block_on(c.hello("after"))
        .expect("the same client, after");
    assert_eq!(r.pid, new);
    drop(host);
}
