//! Configuration: the file a user edits (`server.yaml` or `server.toml`), turned into a typed
//! [`Config`].
//!
//! Loading happens in three steps, each in its own file:
//! - [`tree`]: the text is parsed (YAML with `saphyr`, TOML with `toml`'s spanned tables) into one
//!   format-neutral [`tree::Node`] tree in which every value knows its line and column;
//! - this module (the walk is in `walk.rs`) turns that tree into [`Config`], rejecting unknown keys
//!   (naming the nearest valid one), wrong types, bad durations ([`duration`]) and bad addresses
//!   ([`addr`]), and checks what can be checked without the handler registry (two servers on one
//!   address, cert files present);
//! - route parameters stay as [`Params`] (a map of nodes) so that each handler's factory can read
//!   and validate its own keys with [`Params::str`], [`Params::duration`], [`Params::path`], …
//!   (in `params.rs`) and still report errors with file, line, column and key path.
//!
//! Every error is a [`ConfigError`] whose `Display` reads
//! `server.yaml:12:20: servers.s1.routes./sleep.duration: invalid duration "abc" (…)`.
//!
//! Lookup ([`locate`]) when no `-c` is given: `$APPHOST_CONFIG`, `./server.yaml`, `./server.toml`,
//! `./config/server.yaml`, `./config/server.toml`, then the embedded default ([`EMBEDDED_DEFAULT`]).

pub(crate) mod access_log;
pub(crate) mod addr;
mod aliases;
pub(crate) mod duration;
pub(crate) mod error;
pub(crate) mod file;
pub(crate) mod guards;
mod params;
mod pattern;
pub(crate) mod tree;
mod values;
mod walk;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use access_log::{AccessLogConfig, AccessLogFormat, LogTarget};
pub(crate) use addr::ListenAddr;
pub use error::{ConfigError, Pos};
pub use params::ParamType;
pub(crate) use pattern::RoutePattern;
pub(crate) use tree::Node;
pub(crate) use values::{log_level, nearest};
pub(crate) use walk::locate_in;

/// The embedded default configuration: the seed's first example (one server on `:8199` with `/`,
/// `/pid`, `/sleep`, admin at `/debug/admin`), used when no config file is found.
pub(crate) const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

static EMBEDDED_OVERRIDE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Replace the embedded default for this process (first call wins). Used by
/// [`crate::Host::default_config`], so a program ships its own default config.
pub(crate) fn set_embedded_default(yaml: &'static str) {
    let _ = EMBEDDED_OVERRIDE.set(yaml);
}

/// The embedded default config text in force.
pub(crate) fn embedded_text() -> &'static str {
    EMBEDDED_OVERRIDE.get().copied().unwrap_or(EMBEDDED_DEFAULT)
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    /// A file on disk (absolute path).
    File(PathBuf),
    /// The embedded default.
    Embedded,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Where it was loaded from.
    pub source: ConfigSource,
    /// `graceful`: restarts hand over to a ready new generation before the old one drains.
    /// Default false (a restart is a full one: old drains and exits, then new starts).
    pub graceful: bool,
    /// `graceful_timeout`: how long a new generation has to report ready. Default 10s.
    pub graceful_timeout: Duration,
    /// `shutdown_timeout`: how long a draining generation may take before what is left is cut.
    /// Default 60s.
    pub shutdown_timeout: Duration,
    /// `shutdown_delay`: on a stop (signal or `apphost shutdown`), how long the host keeps
    /// accepting and serving while its `ready` routes answer 503, so load balancers and
    /// Kubernetes take it out of rotation before anything stops accepting. Default 0.
    pub shutdown_delay: Duration,
    /// `keepalive_grace`: when draining, how long an idle keep-alive connection is kept open so a
    /// request the client may already be sending is answered (with `Connection: close`) rather
    /// than lost. Default 1s.
    pub keepalive_grace: Duration,
    /// `header_read_timeout`: a new connection must complete its TLS handshake and the headers of
    /// its first request within this. Default 30s.
    pub header_read_timeout: Duration,
    /// `idle_timeout`: an HTTP/1 keep-alive connection is closed when its next request's headers
    /// have not arrived this long after the previous response ended; an HTTP/2 connection with
    /// no open stream for this long gets GOAWAY and is closed. Default 60s.
    pub idle_timeout: Duration,
    /// `send_timeout` (nginx's name and meaning): a response that makes no write progress for
    /// this long (the client stopped reading, or keeps an HTTP/2 window shut) is cut and its
    /// connection closed. Default 60s.
    pub send_timeout: Duration,
    /// `stream_grace`: when draining, how long the host leaves upgraded connections
    /// (WebSockets) to the application before it closes them itself (a WebSocket gets a close
    /// frame 1001, "going away"). Shorter than `shutdown_timeout`. Default: none (they are left
    /// to the application until `shutdown_timeout`).
    pub stream_grace: Option<Duration>,
    /// `http2_max_concurrent_streams`: the most streams one HTTP/2 connection may have open at
    /// once (nginx's name and default). Default 128.
    pub http2_max_concurrent_streams: u32,
    /// `warm_standby`: with `graceful`, keep the next worker process started ahead of the next
    /// restart, so a restart skips process start-up. Default: the value of `graceful`.
    pub warm_standby: bool,
    /// `log`.
    pub log: LogConfig,
    /// `control`: the supervisor's Unix control socket for the CLI.
    pub control: ControlConfig,
    /// `watch`: restart by itself when the executable or config changes.
    pub watch: WatchConfig,
    /// `recycle`: restart the serving worker when it passes one of these (none by default).
    pub recycle: Option<RecycleConfig>,
    /// `servers`, in the order of their names.
    pub servers: Vec<ServerConfig>,
    /// Things that work but should be fixed (a token file others can read), each as
    /// `FILE:LINE:COL: KEYPATH: MESSAGE`; `run` logs them, `check` prints them.
    pub warnings: Vec<String>,
}

/// `recycle: { max_requests, max_memory, max_age, jitter }` (see `supervisor::recycle`).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RecycleConfig {
    /// Requests a worker serves before it is replaced.
    pub max_requests: Option<u64>,
    /// Resident memory (bytes) past which a worker is replaced.
    pub max_memory: Option<u64>,
    /// How long a worker serves before it is replaced.
    pub max_age: Option<Duration>,
    /// Each worker's `max_requests` and `max_age` are raised by a random part of them up to this
    /// fraction (0 to 1), drawn once per worker, so hosts started together do not recycle
    /// together. Default 0.
    pub jitter: f64,
}

/// A `max_request_body`: `Some(bytes)`, or `None` for no limit.
pub(crate) type BodyLimit = Option<u64>;

/// `log: { format, level }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `apphost=debug`. Default `info`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `control: { socket }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ControlConfig {
    /// Path of the Unix control socket. `None`: derived (see the control module).
    pub socket: Option<PathBuf>,
}

/// `watch: { executable, config, settle }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchConfig {
    /// Restart when the executable is replaced. Default: the value of `graceful`.
    pub executable: bool,
    /// Restart when the config file is edited. Default: the value of `graceful`.
    pub config: bool,
    /// How long a changed file must stay quiet before it is used. Default 300ms.
    pub settle: Duration,
}

/// One entry of `servers`.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The key under `servers`.
    pub name: String,
    /// `address`: plain HTTP listeners (a string or a list of strings).
    pub http: Vec<ListenAddr>,
    /// `https`: TLS listeners, if any.
    pub https: Option<HttpsConfig>,
    /// `admin`: admin routes, if configured.
    pub admin: Option<AdminConfig>,
    /// `readiness`: the request a new generation sends through its own routes before it counts
    /// as ready (a 2xx within the timeout, or the restart fails).
    pub readiness: Option<ReadinessConfig>,
    /// `access_log`: where this server's access log goes, if anywhere (off by default).
    pub access_log: Option<AccessLogConfig>,
    /// `routes`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `unix_mode`: the permission bits of the server's Unix sockets (default: what the umask
    /// leaves).
    pub unix_mode: Option<u32>,
    /// `proxy_protocol`: every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// `defer_accept`: the kernel hands a TCP connection over once its first bytes have
    /// arrived (`TCP_DEFER_ACCEPT`, 1 s). Default on.
    pub defer_accept: bool,
    /// `max_connections`: connections this server's listeners hold open at once in one worker;
    /// at the cap the listeners stop accepting (new connections wait in the kernel's queue).
    /// Default [`guards::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// `max_request_body`: the largest request body its routes take (a route may say
    /// otherwise). Default: no limit.
    pub max_request_body: BodyLimit,
}

/// `readiness: { path, timeout }` (or `readiness: /path`, timeout 5s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadinessConfig {
    /// The request's path (and query), e.g. `/ready`.
    pub path: String,
    /// How long the answer may take. Default 5s.
    pub timeout: Duration,
}

/// `https: { address, cert, key }`.
#[derive(Debug, Clone)]
pub(crate) struct HttpsConfig {
    /// TLS listeners (a string or a list of strings).
    pub addresses: Vec<ListenAddr>,
    /// Certificate chain, PEM (resolved against the config file's directory).
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Where `https` stands in the file, for errors found later (cert/key mismatch).
    pub pos: Pos,
}

/// `admin: { path, token, token_file, allowed_exe_dirs, allowed_hosts }`.
#[derive(Debug, Clone)]
pub(crate) struct AdminConfig {
    /// URL path prefix, default `/debug/admin`.
    pub path: String,
    /// Bearer token required, if set (from `token`, or read from `token_file`).
    pub token: Option<String>,
    /// `allowed_exe_dirs`: directories a `newExeFilePath` must be in (empty: any).
    pub allowed_exe_dirs: Vec<PathBuf>,
    /// `allowed_hosts`: without a token, the host names (besides `localhost` and loopback IP
    /// literals) a request's `Host` may carry; compared without case and port. Default empty.
    pub allowed_hosts: Vec<String>,
}

/// One entry of `routes`: `"/path": handler` or `"/path": { handler: name, ...params }`.
#[derive(Debug, Clone)]
pub(crate) struct RouteConfig {
    /// The route pattern: an exact path, or a prefix ending in `/*name` (wildcard).
    pub pattern: RoutePattern,
    /// The registered handler name.
    pub handler: String,
    /// Where the handler name stands (for "unknown handler" errors).
    pub handler_pos: Pos,
    /// The other keys of the route's map.
    pub params: Params,
}

/// A route's parameters: every key of its map except `handler`, still as nodes so that the
/// handler's factory can validate them with positions.
#[derive(Debug, Clone)]
pub struct Params {
    /// The config file (for error messages), `None` for the embedded default.
    pub file: Option<PathBuf>,
    /// Key path of the route, e.g. `servers.s1.routes./sleep`.
    pub key_path: String,
    /// Where the route's value stands.
    pub pos: Pos,
    /// The directory relative paths resolve against.
    pub base_dir: PathBuf,
    /// The entries.
    pub entries: Vec<(String, Node)>,
}

impl Config {
    /// Load and validate the file at `path` (format by extension: `.yaml`/`.yml` or `.toml`).
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        load_impl(path)
    }

    /// Parse the embedded default: [`EMBEDDED_DEFAULT`], or the YAML a program set with
    /// [`crate::Host::default_config`].
    pub(crate) fn embedded() -> Result<Config, ConfigError> {
        parse_str(embedded_text(), Format::Yaml, ConfigSource::Embedded)
    }

    /// Every listener address of every server, with whether it is TLS.
    #[cfg(test)]
    pub(crate) fn listeners(&self) -> Vec<(&ServerConfig, &ListenAddr, bool)> {
        let mut out = Vec::new();
        for s in &self.servers {
            for a in &s.http {
                out.push((s, a, false));
            }
            if let Some(h) = &s.https {
                for a in &h.addresses {
                    out.push((s, a, true));
                }
            }
        }
        out
    }

    /// Find and load the config: `explicit` (`-c FILE`), else the lookup order ([`locate`]),
    /// else the embedded default.
    pub(crate) fn find(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(p) => Config::load(p),
            None => match locate()? {
                Some(p) => Config::load(&p),
                None => Config::embedded(),
            },
        }
    }
}

/// File formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

/// Find the config file to use when `-c` is not given (see the module doc for the order).
/// `Ok(None)` means: use the embedded default.
pub(crate) fn locate() -> Result<Option<PathBuf>, ConfigError> {
    locate_impl()
}

impl Format {
    /// The format a file name's extension says: `.yaml`/`.yml` or `.toml` (any case).
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

// The implementation is in `walk` (the tree walk, loading and lookup) and `params`.

fn load_impl(path: &Path) -> Result<Config, ConfigError> {
    walk::load(path)
}

/// Parse and validate `text` (errors name the source's file; relative paths resolve against
/// its directory, or the current directory for the embedded default).
pub(crate) fn parse_str(
    text: &str,
    format: Format,
    source: ConfigSource,
) -> Result<Config, ConfigError> {
    walk::parse_source(text, format, source)
}

fn locate_impl() -> Result<Option<PathBuf>, ConfigError> {
    let env = std::env::var_os("APPHOST_CONFIG");
    locate_in(Path::new("."), env.as_deref())
}

#[cfg(test)]
mod tests;
