//! A load generator for apphost's restart benchmarks: steady HTTP/1.1 load on 127.0.0.1 while
//! the supervisor is sent SIGUSR1 on a period, with every failure classified and latency reported
//! per phase (before / during / after the restarts); and a handoff timer.
//!
//! ```sh
//! cargo build --release --examples --bins
//! SUP=$(pgrep -o -f 'apphost run')    # the supervisor's pid
//!
//! # 50 clients, one keep-alive connection each; 5 s quiet, 25 s with SIGUSR1 every 500 ms, 5 s quiet
//! target/release/examples/load_harness --url http://127.0.0.1:18480/ --mode keepalive -c 50 \
//!     --warmup 5 --duration 25 --cooldown 5 --restart-pid $SUP --restart-every 500ms
//! # the same with a new connection per request
//! target/release/examples/load_harness --url http://127.0.0.1:18480/ --mode close ...
//! # handoff: 50 times, SIGUSR1 then poll GET /pid until another pid answers
//! target/release/examples/load_harness --url http://127.0.0.1:18480/pid --handoff --count 50 \
//!     --restart-pid $SUP
//! ```
//! Add `--json` for one JSON object on stdout instead of the table, `--json-out FILE` to write it
//! to a file as well.
//!
//! **HTTP/2** (`--h2`, in `h2client.rs`): the same load and phases over `--conns` HTTP/2
//! connections shared by the clients (h2c with prior knowledge for `http://`, TLS with ALPN
//! `h2` for `https://` with `--ca`); a connection that receives GOAWAY is replaced by a new one,
//! and a stream the server did not process (above the GOAWAY's last stream id, or reset with
//! `REFUSED_STREAM`) is sent again and counted under `retried_goaway` / `retried_refused`, not as
//! a failure. A failure there is any other end of a stream (`read_err`: a reset, or the
//! connection closed under a stream the server had taken), or a connect or handshake error
//! (`conn_err`).
//!
//! ```sh
//! target/release/examples/load_harness --h2 --conns 4 -c 50 --url http://127.0.0.1:18480/ \
//!     --warmup 5 --duration 25 --cooldown 5 --restart-pid $SUP --restart-every 500ms
//! target/release/examples/load_harness --h2 --conns 4 -c 50 --url https://127.0.0.1:18482/ \
//!     --ca ca.crt ...
//! ```
//!
//! **Load.** `--mode keepalive`: each client keeps one connection and sends requests back to back;
//! when a response carries `Connection: close` (or is HTTP/1.0 without keep-alive) the client
//! reconnects for the next request — that is not a failure. `--mode close`: a new connection for
//! every request (`Connection: close`). The HTTP/1.1 client is hand-written over tokio's
//! `TcpStream` (`Content-Length`, chunked and read-to-EOF bodies). Latency runs from the start of
//! a request (including the connect, when one is needed) to its last response byte, kept as
//! microseconds in a `Vec<u32>` per phase and sorted for the percentiles. A request belongs to the
//! phase it started in.
//!
//! **Failures**, each counted once per request:
//! - `refused`: connect got ECONNREFUSED; `conn_err`: any other connect error;
//! - `write_err`: writing the request failed;
//! - `idle_closed`: a *reused* keep-alive connection was closed or reset before any byte of the
//!   response (the keep-alive race: browsers retry these silently, wrk counts them as read errors);
//! - `read_err`: closed, reset or malformed before the response was complete (any other case);
//! - `non_2xx`: a complete response whose status is not 2xx;
//! - `timeout`: no complete response within `--timeout` (default 5 s).
//!
//! The first failures (up to 20) are listed with their time, to line them up with the restarts.
//!
//! **Handoff** (`--handoff`): with no load, `--count` times: read the serving pid from the URL
//! (which must answer `PID\n`, apphost's `pid` handler), take t0, send SIGUSR1 to
//! `--restart-pid`, then poll the URL on fresh connections from `--pollers` concurrent pollers
//! (default 2), each back to back, until a pid not seen before answers; the handoff is that
//! response's arrival − t0 (see `handoff.rs`, which also reports the probe's resolution and when
//! the old worker answered last). (Not just "another pid": a
//! new worker accepts before it reports ready, so for a moment the old and the new one both
//! answer.) `--handoff-gap` (default 300 ms) separates the rounds so the previous restart has
//! finished (apphost refuses a restart while one is under way; such a round times out).
//!
//! Bounded: at most 1000 clients, 10 minutes of load, 1000 handoffs; it stops by itself. It only
//! talks to 127.0.0.1. Exit status: 0 if nothing failed, 1 if a request or a handoff failed, 2 on
//! bad arguments.

use std::io;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod h2client;
mod handoff;

const MAX_CLIENTS: usize = 1000;
const MAX_TOTAL: Duration = Duration::from_secs(600);
const MAX_HANDOFFS: u32 = 1000;
const MAX_RESPONSE: usize = 1 << 20;
const MAX_SAMPLES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One connection per client, requests back to back.
    Keepalive,
    /// A new connection per request.
    Close,
}

/// Drive HTTP/1.1 load at 127.0.0.1 across apphost restarts, or time restart handoffs.
#[derive(Debug, Parser)]
#[command(name = "load_harness")]
struct Args {
    /// The URL: http://127.0.0.1:PORT/PATH (only 127.0.0.1 or localhost; https:// with --h2).
    #[arg(long, default_value = "http://127.0.0.1:8199/")]
    url: String,
    /// How clients use connections (HTTP/1.1).
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    mode: Mode,
    /// HTTP/2 instead of HTTP/1.1: h2c with prior knowledge (http://) or TLS with ALPN (https://).
    #[arg(long)]
    h2: bool,
    /// HTTP/2: how many connections the clients' streams share.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// HTTP/2 over TLS: the PEM certificate (a CA, or the server's own) to trust.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 50)]
    clients: usize,
    /// Runtime threads for the load.
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Length of the main phase (with restarts, if --restart-pid is given): 25s, 500ms, or seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load without restarts before the main phase.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Load without restarts after the main phase.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    cooldown: Duration,
    /// Send SIGUSR1 to this pid (apphost's supervisor) during the main phase / for each handoff.
    #[arg(long)]
    restart_pid: Option<i32>,
    /// Period of the restarts during the main phase (the first one at its start).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    restart_every: Duration,
    /// A request without a complete response in this time is a failure.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Handoff mode: no load; time SIGUSR1 → first response from the new worker (URL: /pid).
    #[arg(long)]
    handoff: bool,
    /// Handoff mode: how many restarts to time.
    #[arg(long, default_value_t = 50)]
    count: u32,
    /// Handoff mode: concurrent pollers, each on a fresh connection as soon as its last answered.
    #[arg(long, default_value_t = 2)]
    pollers: usize,
    /// Handoff mode: each poller's pause between an answer and its next connection (0: back to
    /// back; tokio's timer rounds a pause up to whole milliseconds).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    poll_pause: Duration,
    /// Handoff mode: pause between rounds.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    handoff_gap: Duration,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file (the tables still go to stdout).
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// `500ms`, `2s`, `1m`, or a bare number of seconds (`5`, `0.5`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 5s, 1m, 5)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid unit in {s:?} (ms, s or m)")),
    };
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where requests go.
#[derive(Debug, Clone)]
struct Target {
    /// `https://`: TLS (HTTP/2 only).
    tls: bool,
    addr: std::net::SocketAddr,
    host_header: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("{url:?}: only http:// and https:// URLs")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: give the port (http://127.0.0.1:PORT/)"))?;
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!("{url:?}: only 127.0.0.1 (or localhost) is allowed"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
    Ok(Target {
        tls,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host_header: format!("127.0.0.1:{port}"),
        path: path.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The HTTP/1.1 client.

/// Failure kinds, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Refused,
    ConnErr,
    WriteErr,
    IdleClosed,
    ReadErr,
    Non2xx,
    Timeout,
}

const FAILS: [Fail; 7] = [
    Fail::Refused,
    Fail::ConnErr,
    Fail::WriteErr,
    Fail::IdleClosed,
    Fail::ReadErr,
    Fail::Non2xx,
    Fail::Timeout,
];

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::Refused => "refused",
            Fail::ConnErr => "conn_err",
            Fail::WriteErr => "write_err",
            Fail::IdleClosed => "idle_closed",
            Fail::ReadErr => "read_err",
            Fail::Non2xx => "non_2xx",
            Fail::Timeout => "timeout",
        }
    }
}

/// A complete response.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The server keeps the connection open after it.
    keep_alive: bool,
    /// The body (only kept small: handoff mode reads the pid from it).
    body: Vec<u8>,
}

enum Parse {
    /// More bytes needed (with no length, until the connection ends).
    Incomplete,
    Complete(Resp),
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parse one response at the start of `buf`. `eof`: the peer has closed.
fn parse_response(buf: &[u8], eof: bool) -> Result<Parse, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n", 0) else {
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        return Ok(Parse::Incomplete);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut keep_alive = version == "HTTP/1.1";
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let body_start = head_end + 4;
    let done = |body: &[u8], keep_alive: bool| {
        Ok(Parse::Complete(Resp {
            status,
            keep_alive,
            body: body[..body.len().min(256)].to_vec(),
        }))
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return done(&[], keep_alive);
    }
    if chunked {
        let mut pos = body_start;
        let mut body = Vec::new();
        loop {
            let Some(line_end) = find(buf, b"\r\n", pos) else {
                return Ok(Parse::Incomplete);
            };
            let size_str = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| "bad chunk")?;
            let size_str = size_str.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| format!("bad chunk size {size_str:?}"))?;
            pos = line_end + 2;
            if size == 0 {
                // No trailers (CRLF at once) or trailers ending in CRLF CRLF.
                if buf.len() >= pos + 2 && &buf[pos..pos + 2] == b"\r\n" {
                    return done(&body, keep_alive);
                }
                return match find(buf, b"\r\n\r\n", pos.saturating_sub(2)) {
                    Some(_) => done(&body, keep_alive),
                    None => Ok(Parse::Incomplete),
                };
            }
            if buf.len() < pos + size + 2 {
                return Ok(Parse::Incomplete);
            }
            if body.len() < 256 {
                body.extend_from_slice(&buf[pos..pos + size]);
            }
            pos += size + 2;
        }
    }
    if let Some(n) = content_length {
        if buf.len() >= body_start + n {
            return done(&buf[body_start..body_start + n], keep_alive);
        }
        return Ok(Parse::Incomplete);
    }
    // No length: the body runs to the end of the connection.
    if eof {
        return done(&buf[body_start..], false);
    }
    Ok(Parse::Incomplete)
}

/// How one request attempt ended, short of a complete response.
#[derive(Debug)]
struct Failure {
    kind: Fail,
    detail: String,
}

fn failure(kind: Fail, detail: impl Into<String>) -> Failure {
    Failure {
        kind,
        detail: detail.into(),
    }
}

/// A client's connection; `reused` once a response has come back on it.
struct Conn {
    stream: TcpStream,
    reused: bool,
}

async fn connect(target: &Target) -> Result<TcpStream, Failure> {
    match TcpStream::connect(target.addr).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(failure(Fail::Refused, e.to_string()))
        }
        Err(e) => Err(failure(Fail::ConnErr, e.to_string())),
    }
}

/// Read one response from `conn` into `buf` (cleared first).
async fn read_response(conn: &mut Conn, buf: &mut Vec<u8>) -> Result<Resp, Failure> {
    buf.clear();
    loop {
        let read_fail = |detail: String, got: usize, reused: bool| {
            if got == 0 && reused {
                failure(Fail::IdleClosed, detail)
            } else {
                failure(
                    Fail::ReadErr,
                    format!("{detail} after {got} response bytes"),
                )
            }
        };
        if buf.capacity() - buf.len() < 4096 {
            if buf.len() > MAX_RESPONSE {
                return Err(failure(Fail::ReadErr, "response over 1 MiB"));
            }
            buf.reserve(16 * 1024);
        }
        let n = match conn.stream.read_buf(buf).await {
            Ok(n) => n,
            Err(e) => return Err(read_fail(e.to_string(), buf.len(), conn.reused)),
        };
        let eof = n == 0;
        match parse_response(buf, eof) {
            Ok(Parse::Complete(r)) => return Ok(r),
            Ok(Parse::Incomplete) if eof => {
                return Err(read_fail("closed".into(), buf.len(), conn.reused));
            }
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(failure(Fail::ReadErr, e)),
        }
    }
}

/// One request: connect if needed, write, read the response. `connected` is set when a new
/// connection was opened.
async fn exchange(
    target: &Target,
    request: &[u8],
    conn: &mut Option<Conn>,
    buf: &mut Vec<u8>,
    connected: &mut bool,
) -> Result<Resp, Failure> {
    if conn.is_none() {
        let stream = connect(target).await?;
        *connected = true;
        *conn = Some(Conn {
            stream,
            reused: false,
        });
    }
    let c = conn.as_mut().expect("connected above");
    if let Err(e) = c.stream.write_all(request).await {
        return Err(failure(Fail::WriteErr, e.to_string()));
    }
    let r = read_response(c, buf).await?;
    c.reused = true;
    Ok(r)
}

fn request_bytes(target: &Target, close: bool) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: apphost-load-harness\r\n{}\r\n",
        target.path,
        target.host_header,
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Print `out` if `--json`, write it to `--json-out` if given.
fn emit_json(args: &Args, out: &Value) -> Result<(), String> {
    if args.json {
        println!("{out}");
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{out}\n"))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load mode.

/// What one phase saw.
#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    fails: [u64; FAILS.len()],
    connects: u64,
    /// HTTP/2: streams sent again because the server did not process them.
    retried_goaway: u64,
    retried_refused: u64,
    lat_us: Vec<u32>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        for (a, b) in self.fails.iter_mut().zip(other.fails) {
            *a += b;
        }
        self.connects += other.connects;
        self.retried_goaway += other.retried_goaway;
        self.retried_refused += other.retried_refused;
        self.lat_us.extend(other.lat_us);
    }

    fn failed(&self) -> u64 {
        self.fails.iter().sum()
    }
}

/// A failure worth showing, with its time since the start of the run.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    phase: &'static str,
    kind: Fail,
    detail: String,
}

/// Phase boundaries.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    ends: [Instant; 3],
}

impl Clock {
    fn phase(&self, t: Instant) -> Option<usize> {
        self.ends.iter().position(|end| t < *end)
    }
}

struct Shared {
    target: Target,
    request: Vec<u8>,
    mode: Mode,
    timeout: Duration,
    clock: Clock,
    names: [&'static str; 3],
    samples: Mutex<Vec<Sample>>,
    /// HTTP/2's connections (`--h2`).
    pool: Option<Arc<h2client::Pool>>,
}

impl Shared {
    fn sample(&self, at: Instant, phase: usize, f: &Failure) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < MAX_SAMPLES {
            s.push(Sample {
                at: at.duration_since(self.clock.start),
                phase: self.names[phase],
                kind: f.kind,
                detail: f.detail.clone(),
            });
        }
    }
}

/// An HTTP/2 client: requests back to back on its slot's connection (see `h2client`).
async fn h2_client(sh: Arc<Shared>, pool: Arc<h2client::Pool>, slot: usize) -> [Stats; 3] {
    let mut stats: [Stats; 3] = Default::default();
    loop {
        let start = Instant::now();
        let Some(phase) = sh.clock.phase(start) else {
            break;
        };
        let outcome = tokio::time::timeout(sh.timeout, pool.request(slot)).await;
        let done = Instant::now();
        let st = &mut stats[phase];
        let result = match outcome {
            Ok(d) => {
                st.connects += d.connects;
                for r in d.retries {
                    match r {
                        h2client::Retry::GoAway => st.retried_goaway += 1,
                        h2client::Retry::Refused => st.retried_refused += 1,
                    }
                }
                d.result
            }
            Err(_) => Err(failure(
                Fail::Timeout,
                format!("no complete response in {:?}", sh.timeout),
            )),
        };
        let f = match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                st.ok += 1;
                let us = done.duration_since(start).as_micros();
                st.lat_us.push(us.min(u128::from(u32::MAX)) as u32);
                continue;
            }
            Ok((status, _)) => failure(Fail::Non2xx, format!("status {status}")),
            Err(f) => f,
        };
        st.fails[f.kind as usize] += 1;
        sh.sample(start, phase, &f);
    }
    stats
}

async fn client(sh: Arc<Shared>) -> [Stats; 3] {
    let mut stats: [Stats; 3] = Default::default();
    let mut conn: Option<Conn> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let start = Instant::now();
        let Some(phase) = sh.clock.phase(start) else {
            break;
        };
        let mut connected = false;
        let outcome = tokio::time::timeout(
            sh.timeout,
            exchange(&sh.target, &sh.request, &mut conn, &mut buf, &mut connected),
        )
        .await;
        let done = Instant::now();
        let st = &mut stats[phase];
        st.connects += u64::from(connected);
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(failure(
                Fail::Timeout,
                format!("no complete response in {:?}", sh.timeout),
            )),
        };
        match result {
            Ok(resp) if (200..300).contains(&resp.status) => {
                st.ok += 1;
                let us = done.duration_since(start).as_micros();
                st.lat_us.push(us.min(u128::from(u32::MAX)) as u32);
                if (sh.mode == Mode::Close || !resp.keep_alive)
                    && let Some(mut c) = conn.take()
                {
                    // Let the server close first (it said it would): the TIME_WAIT is then on
                    // its side, as with a browser. Bounded, and not part of the latency.
                    let mut scratch = [0u8; 512];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), c.stream.read(&mut scratch))
                            .await;
                }
            }
            Ok(resp) => {
                let f = failure(Fail::Non2xx, format!("status {}", resp.status));
                st.fails[Fail::Non2xx as usize] += 1;
                sh.sample(start, phase, &f);
                conn = None;
            }
            Err(f) => {
                st.fails[f.kind as usize] += 1;
                sh.sample(start, phase, &f);
                conn = None;
            }
        }
    }
    stats
}

/// SIGUSR1 to `pid` every `every` from `from` until `until`; returns (sent, errors).
async fn restarter(pid: Pid, every: Duration, from: Instant, until: Instant) -> (u64, Vec<String>) {
    let mut sent = 0;
    let mut errors = Vec::new();
    let mut next = from;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        match kill_process(pid, Signal::USR1) {
            Ok(()) => sent += 1,
            Err(e) => {
                errors.push(format!("kill({}, SIGUSR1): {e}", pid.as_raw_nonzero()));
                if e == rustix::io::Errno::SRCH {
                    break;
                }
            }
        }
        next += every;
    }
    (sent, errors)
}

fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

struct PhaseReport {
    name: &'static str,
    secs: f64,
    stats: Stats,
}

impl PhaseReport {
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.stats.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    fn json(&self) -> Value {
        let l = &self.stats.lat_us;
        let mut fails = serde_json::Map::new();
        for (k, n) in FAILS.iter().zip(self.stats.fails) {
            fails.insert(k.name().into(), n.into());
        }
        json!({
            "phase": self.name,
            "secs": self.secs,
            "requests": self.stats.ok + self.stats.failed(),
            "ok": self.stats.ok,
            "failed": self.stats.failed(),
            "failures": fails,
            "connects": self.stats.connects,
            "retried_goaway": self.stats.retried_goaway,
            "retried_refused": self.stats.retried_refused,
            "rps": self.rps(),
            "p50_us": percentile(l, 0.50),
            "p99_us": percentile(l, 0.99),
            "p999_us": percentile(l, 0.999),
            "max_us": l.last(),
        })
    }
}

fn ms(us: Option<u32>) -> String {
    match us {
        Some(us) => format!("{:.2}", f64::from(us) / 1000.0),
        None => "-".into(),
    }
}

async fn run_load(args: &Args, target: Target) -> Result<bool, String> {
    let start = Instant::now() + Duration::from_millis(20);
    let e1 = start + args.warmup;
    let e2 = e1 + args.duration;
    let e3 = e2 + args.cooldown;
    let names = if args.restart_pid.is_some() {
        ["before", "during", "after"]
    } else {
        ["warmup", "load", "cooldown"]
    };
    let pool = if args.h2 {
        Some(h2client::Pool::new(
            target.clone(),
            args.conns,
            args.ca.as_deref(),
        )?)
    } else {
        None
    };
    let sh = Arc::new(Shared {
        request: request_bytes(&target, args.mode == Mode::Close),
        pool,
        target,
        mode: args.mode,
        timeout: args.timeout,
        clock: Clock {
            start,
            ends: [e1, e2, e3],
        },
        names,
        samples: Mutex::new(Vec::new()),
    });
    let restarts = args.restart_pid.map(|p| {
        let pid = Pid::from_raw(p).expect("checked positive");
        tokio::spawn(restarter(pid, args.restart_every, e1, e2))
    });
    tokio::time::sleep_until(start.into()).await;
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        tasks.push(match &sh.pool {
            Some(p) => tokio::spawn(h2_client(sh.clone(), p.clone(), i)),
            None => tokio::spawn(client(sh.clone())),
        });
    }
    let mut total: [Stats; 3] = Default::default();
    for t in tasks {
        let s = t.await.map_err(|e| format!("client task: {e}"))?;
        for (a, b) in total.iter_mut().zip(s) {
            a.merge(b);
        }
    }
    let (sent, kill_errors) = match restarts {
        Some(h) => h.await.map_err(|e| format!("restarter: {e}"))?,
        None => (0, Vec::new()),
    };
    let phases: Vec<PhaseReport> = total
        .into_iter()
        .zip(names)
        .zip([args.warmup, args.duration, args.cooldown])
        .filter(|((_, _), d)| !d.is_zero())
        .map(|((mut stats, name), d)| {
            stats.lat_us.sort_unstable();
            PhaseReport {
                name,
                secs: d.as_secs_f64(),
                stats,
            }
        })
        .collect();
    let samples = sh.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let any_failed = phases.iter().any(|p| p.stats.failed() > 0);
    let mode = match (args.h2, sh.target.tls, args.mode) {
        (true, false, _) => "h2c",
        (true, true, _) => "h2-tls",
        (false, _, Mode::Keepalive) => "keepalive",
        (false, _, Mode::Close) => "close",
    };
    let out = json!({
        "url": args.url,
        "mode": mode,
        "clients": args.clients,
        "h2_conns": args.h2.then_some(args.conns),
        "restart_pid": args.restart_pid,
        "restart_every_ms": args.restart_pid.map(|_| args.restart_every.as_millis() as u64),
        "restarts_sent": sent,
        "kill_errors": kill_errors,
        "phases": phases.iter().map(PhaseReport::json).collect::<Vec<_>>(),
        "first_failures": samples.iter().map(|s| json!({
            "at_ms": s.at.as_secs_f64() * 1000.0,
            "phase": s.phase,
            "kind": s.kind.name(),
            "detail": s.detail,
        })).collect::<Vec<_>>(),
    });
    emit_json(args, &out)?;
    if !args.json {
        println!(
            "load_harness: {} mode={mode} clients={}{} timeout={:?}",
            args.url,
            args.clients,
            if args.h2 {
                format!(" connections={}", args.conns)
            } else {
                String::new()
            },
            args.timeout
        );
        if let Some(pid) = args.restart_pid {
            println!(
                "restarts: SIGUSR1 to {pid} every {:?} during {:?}: {sent} sent{}",
                args.restart_every,
                args.duration,
                if kill_errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors: {}", kill_errors.join("; "))
                }
            );
        }
        print!(
            "{:<8} {:>5} {:>9} {:>9} {:>6}",
            "phase", "secs", "requests", "req/s", "failed"
        );
        for k in FAILS {
            print!(" {:>w$}", k.name(), w = k.name().len().max(4));
        }
        println!(
            " {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "conns", "retried", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for p in &phases {
            let s = &p.stats;
            print!(
                "{:<8} {:>5.1} {:>9} {:>9.0} {:>6}",
                p.name,
                p.secs,
                s.ok + s.failed(),
                p.rps(),
                s.failed()
            );
            for (k, n) in FAILS.iter().zip(s.fails) {
                print!(" {:>w$}", n, w = k.name().len().max(4));
            }
            println!(
                " {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                s.connects,
                s.retried_goaway + s.retried_refused,
                ms(percentile(&s.lat_us, 0.5)),
                ms(percentile(&s.lat_us, 0.99)),
                ms(percentile(&s.lat_us, 0.999)),
                ms(s.lat_us.last().copied())
            );
        }
        if !samples.is_empty() {
            println!("first failures (time since start):");
            for s in &samples {
                println!(
                    "  {:>9.3}s {:<7} {:<11} {}",
                    s.at.as_secs_f64(),
                    s.phase,
                    s.kind.name(),
                    s.detail
                );
            }
        }
    }
    Ok(!any_failed && kill_errors.is_empty())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match parse_url(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("load_harness: {e}");
            return ExitCode::from(2);
        }
    };
    let checks = [
        (
            args.clients == 0 || args.clients > MAX_CLIENTS,
            "--clients must be 1..=1000",
        ),
        (
            args.warmup + args.duration + args.cooldown > MAX_TOTAL,
            "warmup + duration + cooldown must be at most 10 minutes",
        ),
        (
            args.count == 0 || args.count > MAX_HANDOFFS,
            "--count must be 1..=1000",
        ),
        (
            args.pollers == 0 || args.pollers > 16,
            "--pollers must be 1..=16",
        ),
        (
            args.restart_pid.is_some_and(|p| p <= 1),
            "--restart-pid must be a process id above 1",
        ),
        (
            args.restart_every < Duration::from_millis(10),
            "--restart-every must be at least 10ms",
        ),
        (
            args.threads == 0 || args.threads > 64,
            "--threads must be 1..=64",
        ),
        (args.timeout.is_zero(), "--timeout must be positive"),
        (
            args.conns == 0 || args.conns > MAX_CLIENTS,
            "--conns must be 1..=1000",
        ),
        (
            target.tls && (!args.h2 || args.handoff),
            "https:// URLs need --h2 (and no --handoff)",
        ),
    ];
    for (bad, msg) in checks {
        if bad {
            eprintln!("load_harness: {msg}");
            return ExitCode::from(2);
        }
    }
    let rt = if args.handoff {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load_harness: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        if args.handoff {
            handoff::run_handoff(&args, target).await
        } else {
            run_load(&args, target).await
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("load_harness: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8199/pid").unwrap();
        assert_eq!(t.addr.port(), 8199);
        assert_eq!(t.path, "/pid");
        assert_eq!(parse_url("http://localhost:80").unwrap().path, "/");
        assert!(parse_url("http://10.0.0.1:80/").is_err());
        assert!(parse_url("https://127.0.0.1:80/").unwrap().tls);
        assert!(!parse_url("http://127.0.0.1:80/").unwrap().tls);
        assert!(parse_url("ftp://127.0.0.1:80/").is_err());
    }

    fn complete(buf: &[u8]) -> Resp {
        match parse_response(buf, false).unwrap() {
            Parse::Complete(r) => r,
            Parse::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn responses() {
        let r = complete(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nHello\n");
        assert_eq!(
            (r.status, r.keep_alive, &r.body[..]),
            (200, true, &b"Hello\n"[..])
        );
        let r = complete(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((r.status, r.keep_alive), (503, false));
        let r =
            complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(&r.body[..], b"abc");
        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nHel";
        assert!(matches!(
            parse_response(partial, false),
            Ok(Parse::Incomplete)
        ));
        let to_eof = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert!(matches!(
            parse_response(to_eof, false),
            Ok(Parse::Incomplete)
        ));
        assert!(matches!(
            parse_response(to_eof, true),
            Ok(Parse::Complete(_))
        ));
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
