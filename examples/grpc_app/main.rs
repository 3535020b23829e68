//! A gRPC service (tonic, with prost messages) hosted by apphost through `Host::service`: the
//! service is a tower `Service` like an axum router, so apphost serves it on its HTTP/2
//! connections, restarts it without losing a call, and passes the response trailers
//! (`grpc-status`, `grpc-message`) through to the client.
//!
//! ```sh
//! cargo run --release --example grpc_app -- serve run -c examples/grpc_app.yaml
//! cargo run --release --example grpc_app -- call hello --name ada        # one unary call
//! cargo run --release --example grpc_app -- call count --n 5             # a server stream
//! # calls from 50 tasks for 30 s while the supervisor restarts every 500 ms; any error fails
//! cargo run --release --example grpc_app -- load -c 50 --duration 30s --restart-pid $SUP
//! ```
//!
//! The service has two methods (see `proto.rs` for the messages): `Hello`, unary, answers a
//! greeting and the worker's pid (an empty name is `INVALID_ARGUMENT`); `Count`, server
//! streaming, sends `n` replies `interval_ms` apart, each with the worker's pid, and can end
//! with a status after some replies (`fail_at`), which only trailers can carry.
//!
//! Across a restart: a call in flight on the old worker finishes there (a `Count` stream
//! included, up to `shutdown_timeout`); its connection gets GOAWAY, and the client's next call
//! goes on a new connection to the new worker. The `load` client counts every call that did not
//! end with `OK` as an error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apphost::Host;
use futures_util::Stream;
use tonic::{Status, server::Grpc};
use tonic_prost::ProstCodec;

mod proto;
use proto::{CountReply, CountRequest, DemoClient, HelloReply, HelloRequest};

/// The service: routes a call by its path to the method's handler, through tonic's server
/// codec (`tonic::server::Grpc`), as tonic-build's generated server does.
#[derive(Clone, Default)]
struct Demo;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<apphost::Body>> for Demo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<apphost::Body>) -> Self::Future {
        match req.uri().path() {
            proto::HELLO => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                Ok(grpc.unary(HelloMethod, req).await)
            }),
            proto::COUNT => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<CountReply, CountRequest>::default());
                Ok(grpc.server_streaming(CountMethod, req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// `Hello`.
struct HelloMethod;

impl tonic::server::UnaryService<HelloRequest> for HelloMethod {
    type Response = HelloReply;
    type Future = BoxFut<Result<tonic::Response<HelloReply>, Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        Box::pin(async move {
            if name.is_empty() {
                return Err(Status::invalid_argument("name is empty"));
            }
            Ok(tonic::Response::new(HelloReply {
                message: format!("hello, {name}"),
                pid: std::process::id(),
            }))
        })
    }
}

/// `Count`.
struct CountMethod;

/// The longest `Count` stream: 10,000 replies, at most 10 s apart.
const MAX_COUNT: u32 = 10_000;
const MAX_INTERVAL_MS: u32 = 10_000;

impl tonic::server::ServerStreamingService<CountRequest> for CountMethod {
    type Response = CountReply;
    type ResponseStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;
    type Future = BoxFut<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: tonic::Request<CountRequest>) -> Self::Future {
        let r = req.into_inner();
        Box::pin(async move {
            if r.n > MAX_COUNT || r.interval_ms > MAX_INTERVAL_MS {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_COUNT} replies, {MAX_INTERVAL_MS} ms apart"
                )));
            }
            let interval = Duration::from_millis(u64::from(r.interval_ms));
            let pid = std::process::id();
            let s = futures_util::stream::unfold(0u32, move |i| async move {
                if i >= r.n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if r.fail_at > 0 && i + 1 == r.fail_at {
                    // Ends the stream: the status goes out in the trailers.
                    return Some((
                        Err(Status::out_of_range(format!("failed at {}", i + 1))),
                        r.n,
                    ));
                }
                Some((Ok(CountReply { i: i + 1, pid }), i + 1))
            });
            Ok(tonic::Response::new(Box::pin(s) as Self::ResponseStream))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The client side: `call` and `load`.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `call hello|count`: one call, its answer printed.
fn call(m: &clap::ArgMatches) -> ExitCode {
    let addr = m.get_one::<String>("addr").cloned().unwrap_or_default();
    let (method, args) = m.subcommand().expect("subcommand_required");
    runtime().block_on(async move {
        let mut c = DemoClient::new(&addr);
        let r = match method {
            "hello" => {
                let name = args.get_one::<String>("name").cloned().unwrap_or_default();
                c.hello(&name)
                    .await
                    .map(|r| println!("{} (pid {})", r.message, r.pid))
            }
            _ => {
                let n = *args.get_one::<u32>("n").expect("default");
                let req = CountRequest {
                    n,
                    interval_ms: 200,
                    fail_at: 0,
                };
                match c.count(req).await {
                    Ok(mut s) => loop {
                        match s.message().await {
                            Ok(Some(r)) => println!("{} (pid {})", r.i, r.pid),
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    },
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(s) => {
                eprintln!("grpc_app: {:?}: {}", s.code(), s.message());
                ExitCode::FAILURE
            }
        }
    })
}

/// `load`: `-c` tasks make `Hello` calls back to back for `--duration` on `--conns`
/// connections, while (with `--restart-pid`) the supervisor gets SIGUSR1 every
/// `--restart-every-ms`. Prints calls, errors (the first ones in full), the calls sent again
/// because the server had not processed them (`--no-retry`: those are errors instead), calls
/// per second and latency. Exit status 1 if any call failed.
fn load(m: &clap::ArgMatches) -> ExitCode {
    let addr = m.get_one::<String>("addr").cloned().unwrap_or_default();
    let clients = *m.get_one::<usize>("clients").expect("default");
    let conns = *m.get_one::<usize>("conns").expect("default");
    let secs = *m.get_one::<f64>("duration").expect("default");
    let every_ms = *m.get_one::<u64>("restart-every-ms").expect("default");
    let restart_pid = m.get_one::<i32>("restart-pid").copied();
    let retry = !m.get_flag("no-retry");
    let duration = Duration::from_secs_f64(secs.clamp(0.1, 600.0));
    runtime().block_on(async move {
        // `conns` clients, each its own connection; the tasks share them round-robin.
        let pools: Vec<DemoClient> = (0..conns.max(1))
            .map(|_| DemoClient::with_retry(&addr, retry))
            .collect();
        let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let error_count = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + duration;
        let restarter = restart_pid.map(|pid| {
            tokio::spawn(async move {
                let pid = rustix::process::Pid::from_raw(pid).expect("a pid above 0");
                let mut sent = 0u32;
                while Instant::now() + Duration::from_millis(every_ms) < end {
                    if rustix::process::kill_process(pid, rustix::process::Signal::USR1).is_ok() {
                        sent += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(every_ms)).await;
                }
                sent
            })
        });
        let mut tasks = Vec::new();
        for i in 0..clients.max(1) {
            let mut c = pools[i % pools.len()].clone();
            let (errors, error_count) = (errors.clone(), error_count.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    match c.hello("load").await {
                        Ok(_) => lat.push(t.elapsed().as_micros() as u32),
                        Err(s) => {
                            error_count.fetch_add(1, Ordering::Relaxed);
                            let mut e = errors.lock().unwrap_or_else(|p| p.into_inner());
                            if e.len() < 10 {
                                e.push(format!("{:?}: {}", s.code(), s.message()));
                            }
                        }
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("a load task"));
        }
        let restarts = match restarter {
            Some(r) => r.await.expect("the restarter"),
            None => 0,
        };
        lat.sort_unstable();
        let pct = |q: f64| {
            lat.get(((q * lat.len() as f64).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        let failed = error_count.load(Ordering::Relaxed);
        println!(
            "grpc load: {clients} tasks on {conns} connections, {:.1} s, SIGUSR1 sent {restarts} times, transparent retry {}",
            duration.as_secs_f64(),
            if retry { "on" } else { "off" }
        );
        println!(
            "calls ok {}  errors {failed}  sent again (not processed) {}  calls/s {:.0}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            lat.len(),
            proto::retried(),
            lat.len() as f64 / duration.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
        for e in errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            println!("  error: {e}");
        }
        if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

fn main() -> ExitCode {
    let addr = clap::Arg::new("addr")
        .long("addr")
        .default_value("127.0.0.1:50051")
        .help("The server (127.0.0.1:PORT)");
    let cli = clap::Command::new("grpc_app")
        .about("A tonic gRPC service hosted by apphost")
        .subcommand(
            Host::command().name("serve").about(
                "Serve the gRPC service with apphost (run, check, restart, status, shutdown)",
            ),
        )
        .subcommand(
            clap::Command::new("call")
                .about("Call the service once")
                .arg(addr.clone())
                .subcommand(
                    clap::Command::new("hello")
                        .arg(clap::Arg::new("name").long("name").default_value("ada")),
                )
                .subcommand(
                    clap::Command::new("count").arg(
                        clap::Arg::new("n")
                            .long("n")
                            .default_value("5")
                            .value_parser(clap::value_parser!(u32)),
                    ),
                )
                .subcommand_required(true),
        )
        .subcommand(
            clap::Command::new("load")
                .about("Unary calls under load, optionally across restarts")
                .arg(addr)
                .arg(
                    clap::Arg::new("clients")
                        .short('c')
                        .default_value("50")
                        .value_parser(clap::value_parser!(usize)),
                )
                .arg(
                    clap::Arg::new("conns")
                        .long("conns")
                        .default_value("4")
                        .value_parser(clap::value_parser!(usize)),
                )
                .arg(
                    clap::Arg::new("duration")
                        .long("duration")
                        .default_value("10")
                        .help("Seconds")
                        .value_parser(clap::value_parser!(f64)),
                )
                .arg(
                    clap::Arg::new("restart-pid")
                        .long("restart-pid")
                        .value_parser(clap::value_parser!(i32)),
                )
                .arg(
                    clap::Arg::new("restart-every-ms")
                        .long("restart-every-ms")
                        .default_value("500")
                        .value_parser(clap::value_parser!(u64)),
                )
                .arg(
                    clap::Arg::new("no-retry")
                        .long("no-retry")
                        .action(clap::ArgAction::SetTrue)
                        .help(
                            "No transparent retry: a call the server did not process is an error",
                        ),
                ),
        )
        .subcommand_required(true);
    let matches = cli.get_matches();
    match matches.subcommand() {
        Some(("serve", serve)) => Host::with_builtins()
            .service("demo", Demo)
            .default_config(include_str!("../grpc_app.yaml"))
            .run_with(serve),
        Some(("call", m)) => call(m),
        Some(("load", m)) => load(m),
        _ => ExitCode::from(2),
    }
}
