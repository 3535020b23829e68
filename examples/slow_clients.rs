//! Slow and stalled clients against apphost (issue #10's two high findings), for
//! `bench/slow_clients.sh`:
//!
//! ```sh
//! # 4 clients read /files/big.bin at 400 KB/s through a 16 KiB receive buffer; 0.5 s in, the
//! # supervisor gets SIGUSR1 (a graceful restart) or SIGTERM; every client must get every byte
//! slow_clients read --port 18490 --path /files/big.bin --clients 4 --rate 400000 \
//!     --signal-pid $SUP --signal usr1 --after 500ms
//! # 40 HTTP/1 clients that never read + one h2c connection with a zero window and 60 streams:
//! # the worker's RSS growth while they are stalled, and when the worker closes them
//! slow_clients hold --port 18490 --path /files/big.bin --h1 40 --h2-streams 60 \
//!     --admin /debug/admin --send-timeout 10s
//! ```
//!
//! `read` prints one line per client (bytes received of `Content-Length`, time taken) and exits
//! 1 if any client got less than the whole body. `hold` reads the worker's pid from `GET /pid`,
//! samples its `VmRSS` (`/proc/PID/status`) before the clients and every 100 ms while they are
//! stalled, then polls `{admin}/status` until the worker's live connections are back to one (the
//! poll itself) and prints how long after the last response head that took; it exits 1 if the
//! growth is 48 MiB or more, or if the connections are not closed within `send_timeout` plus one
//! second (the watchdog's tick and this poll's period). Only 127.0.0.1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sig {
    Usr1,
    Term,
}

#[derive(Subcommand)]
enum Cmd {
    /// Slow readers across a signal to the supervisor.
    Read {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Bytes a second each client reads.
        #[arg(long, default_value_t = 400_000)]
        rate: u64,
        #[arg(long)]
        signal_pid: i32,
        #[arg(long, value_enum)]
        signal: Sig,
        #[arg(long, value_parser = parse_ms, default_value = "500ms")]
        after: Duration,
    },
    /// Clients that never read, and an HTTP/2 connection whose window stays shut.
    Hold {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 40)]
        h1: usize,
        #[arg(long, default_value_t = 60)]
        h2_streams: usize,
        #[arg(long)]
        admin: String,
        #[arg(long, value_parser = parse_ms)]
        send_timeout: Duration,
    },
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|e| e.to_string());
    }
    s.strip_suffix('s')
        .ok_or("a duration like 500ms or 10s")?
        .parse()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let ok = match Args::parse().cmd {
        Cmd::Read {
            port,
            path,
            clients,
            rate,
            signal_pid,
            signal,
            after,
        } => read(port, &path, clients, rate, signal_pid, signal, after).await,
        Cmd::Hold {
            port,
            path,
            h1,
            h2_streams,
            admin,
            send_timeout,
        } => hold(port, &path, h1, h2_streams, &admin, send_timeout).await,
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A connection whose receive buffer is `rcvbuf` (set before connecting: a small window).
async fn connect_small(port: u16, rcvbuf: u32) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_recv_buffer_size(rcvbuf)?;
    s.connect(([127, 0, 0, 1], port).into()).await
}

/// Send `GET path` and read the response head; its `Content-Length`.
async fn get_head(s: &mut TcpStream, path: &str) -> Result<u64, String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            r => return Err(format!("head cut: {r:?}")),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head:?}"))
}

async fn slow_read(port: u16, path: String, rate: u64) -> Result<(u64, u64, Duration), String> {
    let mut s = connect_small(port, 16 << 10)
        .await
        .map_err(|e| e.to_string())?;
    let len = get_head(&mut s, &path).await?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = vec![0u8; 8 << 10];
    while n < len {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => n += k as u64,
            _ => break,
        }
        // Pacing: `rate` bytes a second.
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    Ok((n, len, start.elapsed()))
}

async fn read(
    port: u16,
    path: &str,
    clients: usize,
    rate: u64,
    pid: i32,
    sig: Sig,
    after: Duration,
) -> bool {
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(slow_read(port, path.to_string(), rate)))
        .collect();
    tokio::time::sleep(after).await;
    let signal = match sig {
        Sig::Usr1 => rustix::process::Signal::USR1,
        Sig::Term => rustix::process::Signal::TERM,
    };
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, signal);
    }
    let mut all = true;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok((got, len, took)) => {
                let whole = got == len;
                all &= whole;
                println!(
                    "client {i}: {got} of {len} bytes in {:.1} s{}",
                    took.as_secs_f64(),
                    if whole { "" } else { "  CUT" }
                );
            }
            Err(e) => {
                all = false;
                println!("client {i}: failed: {e}");
            }
        }
    }
    println!(
        "{}",
        if all {
            "every client received every byte"
        } else {
            "SOME RESPONSES WERE CUT"
        }
    );
    all
}

/// `GET path` over a fresh connection; the body.
async fn get_body(port: u16, path: &str, accept: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| "no body".to_string())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn connections(port: u16, admin: &str) -> Option<u64> {
    let body = get_body(port, &format!("{admin}/status"), "application/json")
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["worker"]["connections"].as_u64()
}

async fn hold(
    port: u16,
    path: &str,
    h1: usize,
    h2_streams: usize,
    admin: &str,
    send_timeout: Duration,
) -> bool {
    let worker: u32 = match get_body(port, "/pid", "*/*").await {
        Ok(b) => b.trim().parse().unwrap_or(0),
        Err(e) => {
            println!("cannot read the worker pid: {e}");
            return false;
        }
    };
    let before = rss_kib(worker);
    println!(
        "worker {worker}: VmRSS before {:.1} MiB",
        before as f64 / 1024.0
    );
    // HTTP/1 clients that send a request and never read a byte.
    let mut stalled = Vec::new();
    for _ in 0..h1 {
        let mut s = connect_small(port, 4 << 10).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // One h2c connection, window 0, `h2_streams` streams of the file.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let h2_conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..h2_streams {
        let req = http::Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        pending.push(resp);
        client = client.ready().await.unwrap();
    }
    let mut held = Vec::new();
    for r in pending {
        if let Ok(r) = r.await {
            held.push(r);
        }
    }
    let stalled_at = Instant::now();
    println!(
        "stalled: {} HTTP/1 clients that never read, {} HTTP/2 streams with a zero window",
        stalled.len(),
        held.len()
    );
    // Peak RSS while they are stalled (until the worker starts closing them).
    let mut peak = before;
    while stalled_at.elapsed() < send_timeout.saturating_sub(Duration::from_millis(500)) {
        peak = peak.max(rss_kib(worker));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grew_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "worker VmRSS peak {:.1} MiB: grew {grew_mib:.1} MiB (target < 48 MiB)",
        peak as f64 / 1024.0
    );
    // When are they closed? The poll's own connection is the one left.
    let deadline = stalled_at + send_timeout + Duration::from_secs(30);
    let closed_after = loop {
        if connections(port, admin).await == Some(1) {
            break Some(stalled_at.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let h2_ended = h2_conn.is_finished();
    drop((stalled, held));
    match closed_after {
        Some(t) => println!(
            "all stalled connections closed {:.2} s after the last response head (send_timeout {:.0} s); h2 connection ended: {h2_ended}",
            t.as_secs_f64(),
            send_timeout.as_secs_f64()
        ),
        None => println!("STALLED CONNECTIONS STILL OPEN 30 s past send_timeout"),
    }
    let closed_in_time = closed_after.is_some_and(|t| t <= send_timeout + Duration::from_secs(1));
    grew_mib < 48.0 && closed_in_time
}
