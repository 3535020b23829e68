//! Test support: start the real `apphost` binary with a temporary config, read its log, talk to
//! it over real sockets on 127.0.0.1, make TLS certificates at test time.
//!
//! Nothing here sleeps to wait for a condition: [`wait_until`] polls with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_apphost");

/// A free TCP port on 127.0.0.1 (bound then released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 10 ms until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `apphost` (supervisor) with its config in a temp dir and its stderr captured.
pub struct Apphost {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    /// Set when the stderr reader has read to the end (every process holding it has exited).
    log_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Apphost {
    /// Write `config` as `server.yaml` in a new temp dir and run `apphost run -c` on it.
    pub fn start(config: &str) -> Apphost {
        Self::start_named(config, "server.yaml")
    }

    /// Same, with another file name (`server.toml` picks TOML).
    pub fn start_named(config: &str, name: &str) -> Apphost {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, name, BIN.as_ref())
    }

    /// Start `exe run -c DIR/NAME` after writing the config there.
    pub fn start_in(dir: tempfile::TempDir, config: &str, name: &str, exe: &Path) -> Apphost {
        let path = dir.path().join(name);
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(exe);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir.path());
        Self::spawn(cmd, dir, path)
    }

    /// Spawn a prepared command, capturing its stderr.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir, config: PathBuf) -> Apphost {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("APPHOST_CONFIG");
        // Unless the test asked for another level.
        if !cmd.get_envs().any(|(k, _)| k == "APPHOST_LOG") {
            cmd.env("APPHOST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("start apphost");
        let log = Arc::new(Mutex::new(String::new()));
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stderr = child.stderr.take().unwrap();
        let (l, done) = (log.clone(), log_done.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if std::env::var_os("APPHOST_TEST_ECHO").is_some() {
                    eprint!("{line}");
                }
                l.lock().unwrap().push_str(&line);
                line.clear();
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        Apphost {
            child,
            dir,
            config,
            log,
            log_done,
        }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle` `count` times (or more).
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        wait_until(timeout, &format!("{count}× {needle:?} in the log"), || {
            (self.log().matches(needle).count() >= count).then_some(())
        });
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let t = Duration::from_secs(15);
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out waiting for {needle:?} in the log:\n{}",
            self.log()
        );
    }

    /// Wait until `port` answers `GET /pid` and return that pid.
    ///
    /// It also waits for the supervisor's `worker ready` line: a worker accepts before the
    /// supervisor has read its ready report, and a restart asked for in between is refused as
    /// "already under way".
    pub fn wait_serving(&self, port: u16) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = try_get(port, "/pid")
                && r.status == 200
            {
                self.wait_log("worker ready");
                return r.body_str().trim().parse().expect("pid body");
            }
            if Instant::now() > deadline {
                panic!("port {port} never served /pid; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send a signal to the supervisor.
    pub fn signal(&self, sig: rustix::process::Signal) {
        signal(self.pid(), sig);
    }

    /// Wait for the supervisor to exit, and for its log to be read to the end: its last lines
    /// are read by a thread, which may still be behind when the process has exited. (A worker
    /// that outlives the supervisor, draining after a SIGKILL, keeps stderr open: then this
    /// returns with what was read after at most 2 s more.)
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let read_by = deadline.min(Instant::now() + Duration::from_secs(2));
                while !self.log_done.load(std::sync::atomic::Ordering::Acquire)
                    && Instant::now() < read_by
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "apphost did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Apphost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A second SIGTERM makes the supervisor kill its workers and exit at once.
            signal(self.pid(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                signal(self.pid(), rustix::process::Signal::TERM);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Send `sig` to `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on 127.0.0.1:port over a fresh connection (HTTP/1.1, `Connection: close`).
pub fn get(port: u16, path: &str) -> Resp {
    try_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// Like [`get`], returning errors.
pub fn try_get(port: u16, path: &str) -> std::io::Result<Resp> {
    request(port, "GET", path, &[], b"")
}

/// One request over a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Read one HTTP/1.1 response with a `Content-Length` body from a keep-alive connection: its
/// head byte by byte up to the blank line, then exactly its body, so nothing of a next response
/// is taken.
pub fn read_one_response(stream: &mut std::net::TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "closed inside a response head"
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Parse a complete HTTP/1.1 response (content-length, chunked, or read-to-close body).
pub fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head_text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-utf8 head"))?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(status_line))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let nl = rest[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[i..i + nl]).unwrap_or("").trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            i += nl + 2;
            if size == 0 {
                break;
            }
            if rest.len() < i + size {
                return Err(bad("truncated chunk body"));
            }
            out.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        out
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = len.1.parse().map_err(|_| bad("bad content-length"))?;
        if rest.len() < n {
            return Err(bad("truncated body"));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, written as PEM
/// files into `dir`.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub serial: Vec<u8>,
}

/// Make a CA and a leaf certificate (with the given serial number) in `dir` as
/// `server.crt`/`server.key`.
pub fn make_pki(dir: &Path, serial: u64) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SerialNumber,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "apphost test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let serial_bytes = serial.to_be_bytes().to_vec();
    leaf.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert_path,
        key_path,
        serial: serial_bytes,
    }
}

/// The result of an HTTPS request.
#[derive(Debug)]
pub struct TlsResp {
    pub status: u16,
    pub version: http::Version,
    pub body: String,
    /// The server's leaf certificate (DER).
    pub peer_cert: Vec<u8>,
}

/// `GET path` over HTTPS to 127.0.0.1:port, trusting `ca_pem`, offering h2 and http/1.1 via
/// ALPN (`h2: false` offers only http/1.1). Fresh connection every call.
pub fn https_get(port: u16, path: &str, ca_pem: &str, h2: bool) -> Result<TlsResp, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(https_get_async(port, path, ca_pem, h2))
}

async fn https_get_async(port: u16, path: &str, ca_pem: &str, h2: bool) -> Result<TlsResp, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    https_over(tcp, &format!("localhost:{port}"), path, ca_pem, h2).await
}

/// As [`https_get`], over the Unix socket at `sock`, with `preamble` (a PROXY header) sent
/// before the TLS handshake.
pub fn https_get_unix(
    sock: &Path,
    preamble: &[u8],
    path: &str,
    ca_pem: &str,
    h2: bool,
) -> Result<TlsResp, String> {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(preamble).await.map_err(|e| e.to_string())?;
        https_over(s, "localhost", path, ca_pem, h2).await
    })
}

/// `GET path` over TLS on `stream`, for the server name `localhost`.
async fn https_over<S>(
    stream: S,
    authority: &str,
    path: &str,
    ca_pem: &str,
    h2: bool,
) -> Result<TlsResp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = http::Request::get(format!("https://{authority}{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if negotiated_h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (status, version, body) = read_response(resp).await?;
    Ok(TlsResp {
        status,
        version,
        body,
        peer_cert,
    })
}

/// Status, version and body (as text) of a hyper client response.
async fn read_response(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<(u16, http::Version, String), String> {
    use http_body_util::BodyExt;
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
}

// ---------------------------------------------------------------------------------------------
// Added for the host tests (tests/it/host.rs): one-shot commands, raw exchanges, h2c, /proc.

/// What a finished `apphost` command printed, and how it ended.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Run `apphost ARGS` in `dir` (as the current directory) with `APPHOST_CONFIG` removed and
/// `env` added, and wait for it to exit (killed and a panic after `timeout`).
pub fn run_cli(dir: &Path, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CmdOutput {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("APPHOST_CONFIG")
        .env("APPHOST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start apphost");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            // Stop the whole host: the supervisor first (it stops its workers), then force it.
            signal(child.id(), rustix::process::Signal::TERM);
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("apphost {args:?} did not exit within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Send `bytes` as they are over a fresh connection to 127.0.0.1:port and read until the server
/// closes (read timeout 30 s).
pub fn raw_exchange(port: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

/// The result of an h2c request.
#[derive(Debug)]
pub struct H2cResp {
    pub status: u16,
    pub version: http::Version,
    pub body: String,
}

/// An HTTP/2 client connection with prior knowledge (h2c) to 127.0.0.1:port: the request sender
/// and the spawned connection task (it ends when the server closes the connection).
pub async fn h2c_connect(
    port: u16,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    Ok((send, tokio::spawn(conn)))
}

/// `GET path` over HTTP/2 with prior knowledge (h2c) on a plain connection to 127.0.0.1:port.
pub fn h2c_get(port: u16, path: &str) -> Result<H2cResp, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (mut send, _conn) = h2c_connect(port).await?;
        let req = http::Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let (status, version, body) = read_response(resp).await?;
        Ok(H2cResp {
            status,
            version,
            body,
        })
    })
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    // After the command: state, then ppid.
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ports handed out by [`free_ports`] in this test process.
static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
    Mutex::new(std::collections::BTreeSet::new());

/// `N` distinct free TCP ports on 127.0.0.1, none handed out before by this function in this test
/// process ([`free_port`] alone may return the same port twice when called in a row).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut held = Vec::new();
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if handed_out.insert(port) {
            out[i] = port;
            i += 1;
        }
        // Held until all are chosen, so the OS cannot give the same port twice in this call.
        held.push(l);
    }
    out
}

/// One port from [`free_ports`].
pub fn unique_port() -> u16 {
    free_ports::<1>()[0]
}

/// A `NOTIFY_SOCKET` for a host started with [`Apphost::start_notified`]: the datagrams its
/// supervisor sends (`READY=1` once the first worker is ready and after each restart, …).
pub struct Notify {
    sock: std::os::unix::net::UnixDatagram,
    /// Every datagram received so far.
    pub seen: Mutex<Vec<String>>,
}

impl Notify {
    /// Wait until a datagram containing `needle` has arrived (`count` of them in all).
    pub fn wait_for_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let have = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.contains(needle))
                .count();
            if have >= count {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting for {count}× {needle:?} on NOTIFY_SOCKET; got {:?}",
                    self.seen.lock().unwrap()
                );
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.lock().unwrap().push(msg);
            }
        }
    }

    /// Wait for the first datagram containing `needle`.
    pub fn wait_for(&self, needle: &str) {
        self.wait_for_count(needle, 1, Duration::from_secs(15));
    }
}

impl Apphost {
    /// Like [`Apphost::start_in`], with `NOTIFY_SOCKET` set to a datagram socket in `dir`, so a
    /// test can wait until the supervisor itself counts the worker as ready (`READY=1`).
    pub fn start_notified(dir: tempfile::TempDir, config: &str, name: &str) -> (Apphost, Notify) {
        let path = dir.path().join(name);
        std::fs::write(&path, config).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &notify_path);
        let host = Self::spawn(cmd, dir, path);
        (
            host,
            Notify {
                sock,
                seen: Mutex::new(Vec::new()),
            },
        )
    }
}
