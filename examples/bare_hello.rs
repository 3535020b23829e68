//! A bare hyper 1 "hello" server: the baseline apphost's steady-state throughput is compared with
//! (the target is at least 0.95× of this).
//!
//! HTTP/1.1 only, keep-alive, `TCP_NODELAY`, a multi-thread tokio runtime with tokio's default
//! worker count (one per CPU it may run on, as apphost's workers), and a listening socket made
//! like apphost's (`SO_REUSEADDR`, backlog 4096). Every request gets `200 OK` with the body `Hello\n` as
//! `text/plain; charset=utf-8` — the same size and headers as apphost's `hello` handler with
//! `text: Hello`, so the two are compared on equal responses.
//!
//! ```sh
//! cargo run --release --example bare_hello -- 18481      # serves http://127.0.0.1:18481/
//! wrk -t2 -c50 -d10s http://127.0.0.1:18481/
//! ```
//!
//! It listens on 127.0.0.1 only and runs until killed (SIGINT/SIGTERM). Built with the
//! `mimalloc` feature (on by default), it allocates through mimalloc as the `apphost` binary does.
//!
//! Two options add, one at a time, what apphost's connections do on top of this, to measure what
//! each costs: `--auto` serves through hyper-util's auto builder (HTTP/1.1 or h2c, chosen by
//! sniffing the first bytes) instead of hyper's `http1` builder, and `--header-timeout` arms
//! hyper's header read timeout (30 s, with `TokioTimer`) as apphost does. The baseline figures
//! use neither.

// The same allocator as the `apphost` binary (with the `mimalloc` feature, on by default), so the
// two are compared on equal terms (BENCHMARKS (ae)).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};

const BODY: &[u8] = b"Hello\n";
/// apphost's default `header_read_timeout`.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn hello(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// The baseline: hyper's http1 connection.
async fn serve_http1(stream: tokio::net::TcpStream, header_timeout: bool) {
    let mut b = http1::Builder::new();
    if header_timeout {
        b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
    }
    let _ = b
        .serve_connection(TokioIo::new(stream), service_fn(hello))
        .await;
}

/// `--auto`: hyper-util's auto connection (HTTP/1.1 or h2c).
async fn serve_auto(stream: tokio::net::TcpStream, header_timeout: bool) {
    let mut b = auto::Builder::new(TokioExecutor::new());
    if header_timeout {
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
    }
    let _ = b
        .serve_connection(TokioIo::new(stream), service_fn(hello))
        .await;
}

fn listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    let sa = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&sa.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn main() -> std::process::ExitCode {
    let usage =
        "usage: bare_hello PORT [--auto] [--header-timeout]   (serves http://127.0.0.1:PORT/)";
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next().map(|a| a.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    let (mut auto, mut header_timeout) = (false, false);
    for a in args {
        match a.as_str() {
            "--auto" => auto = true,
            "--header-timeout" => header_timeout = true,
            _ => {
                eprintln!("{usage}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let std_listener = match listener(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare_hello: cannot listen on 127.0.0.1:{port}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // tokio's default worker count (the CPUs this process may run on), as apphost's workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        eprintln!("bare_hello: serving http://127.0.0.1:{port}/");
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: back off briefly, keep the listener.
                    eprintln!("bare_hello: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // One spawned future per variant, so the plain one is only as big as hyper's http1
            // connection (tokio copies the future when spawning it).
            if auto {
                tokio::spawn(serve_auto(stream, header_timeout));
            } else {
                tokio::spawn(serve_http1(stream, header_timeout));
            }
        }
    })
}
