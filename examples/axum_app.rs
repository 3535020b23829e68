//! An axum application hosted by apphost: the router is registered as it is
//! (`Host::service`), and the program keeps its own command line, with apphost's commands
//! nested under `serve`.
//!
//! ```sh
//! cargo run --release --example axum_app -- serve run -c examples/axum_app.yaml
//! curl localhost:8300/api/users/1            # JSON from a path parameter
//! curl -d '{"name":"grace"}' -H 'content-type: application/json' localhost:8300/api/users
//! curl --data-binary @some.file localhost:8300/api/echo   # the body, back
//! curl -N 'localhost:8300/api/ticks?n=5'      # a streaming response
//! curl localhost:8300/v2/api/users/1          # the same router, mounted again under /v2
//! websocat ws://localhost:8300/api/ws          # a WebSocket echo (closed with 1001 on a restart)
//! curl -N localhost:8300/api/events            # server-sent events (end with `retry:` on a restart)
//! curl -p -x localhost:8300 http://127.0.0.1:8300/api/hello  # through a CONNECT tunnel (loopback only)
//! cargo run --release --example axum_app -- serve restart -c examples/axum_app.yaml
//! cargo run --release --example axum_app -- --motd 'hi there' serve run -c examples/axum_app.yaml
//! cargo run --release --example axum_app -- standalone --addr 127.0.0.1:8301  # plain axum::serve
//! ```
//!
//! What it shows:
//! - shared state (`State<Arc<AppState>>`: users behind a lock, a hit counter, the `--motd` the
//!   program was started with), JSON and path extractors, a POST that reads its body, a
//!   streaming response, the router's own fallback, and tower-http's trace and compression
//!   layers;
//! - long-lived connections across restarts: a WebSocket echo that sends close 1001 ("going
//!   away") when its worker begins draining ([`apphost::draining`]), and a server-sent-events
//!   stream that then ends with a `retry:` hint; either way the client reconnects, lands on the
//!   new worker, and (SSE: `Last-Event-ID`) resumes where it was; and `CONNECT` tunnels (the
//!   fallback is a forward proxy to loopback addresses), which a restart waits for;
//! - the program's own CLI (clap) with apphost's `run`/`check`/`restart`/`status`/`shutdown`
//!   nested as `serve …` ([`Host::command`], [`Host::run_with`]). Every worker is this program
//!   started again with the same arguments, so `--motd` reaches every generation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apphost::{ClientAddr, Host};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

/// What every request handler shares.
struct AppState {
    /// The `--motd` text.
    motd: String,
    users: RwLock<BTreeMap<u64, User>>,
    hits: AtomicU64,
}

#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
}

/// The application's router, as it would be served by `axum::serve` (the benchmark does
/// exactly that with it).
fn router(motd: String) -> Router {
    let users = BTreeMap::from([(
        1,
        User {
            id: 1,
            name: "ada".into(),
        },
    )]);
    let state = Arc::new(AppState {
        motd,
        users: RwLock::new(users),
        hits: AtomicU64::new(0),
    });
    Router::new()
        .route("/api/hello", get(hello))
        .route("/api/users", post(create_user))
        .route("/api/users/{id}", get(get_user))
        .route("/api/echo", post(echo))
        .route("/api/ticks", get(ticks))
        .route("/api/ws", get(ws))
        .route("/api/events", get(events))
        .route(
            "/pid",
            get(|| async { format!("{}\n", std::process::id()) }),
        )
        .fallback(fallback)
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /api/hello`: the `--motd`, how many hits this worker has served, and who asked
/// (apphost puts the client's address in the request's extensions on routes with
/// `client_addr: true`).
async fn hello(State(s): State<Arc<AppState>>, client: Option<Extension<ClientAddr>>) -> String {
    let n = s.hits.fetch_add(1, Ordering::Relaxed) + 1;
    let from = client.map_or("an unknown address".to_string(), |c| c.0.0.ip().to_string());
    format!("{} (hit {n}, from {from})\n", s.motd)
}

/// `GET /api/users/{id}`: JSON, or a JSON 404.
async fn get_user(State(s): State<Arc<AppState>>, Path(id): Path<u64>) -> Response {
    let users = s.users.read().unwrap_or_else(|p| p.into_inner());
    match users.get(&id) {
        Some(u) => Json(u.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no user {id}") })),
        )
            .into_response(),
    }
}

/// `POST /api/users` with `{"name": …}`: 201 and the new user.
async fn create_user(
    State(s): State<Arc<AppState>>,
    Json(new): Json<NewUser>,
) -> (StatusCode, Json<User>) {
    let mut users = s.users.write().unwrap_or_else(|p| p.into_inner());
    let id = users.keys().next_back().map_or(1, |k| k + 1);
    let user = User { id, name: new.name };
    users.insert(id, user.clone());
    (StatusCode::CREATED, Json(user))
}

/// `POST /api/echo`: the request body, back (axum reads it whole; up to its 2 MB default).
async fn echo(body: Bytes) -> Bytes {
    body
}

#[derive(Deserialize)]
struct TicksQuery {
    /// How many lines (default 5).
    n: Option<u32>,
    /// Milliseconds between them (default 200).
    ms: Option<u64>,
    /// Fail instead of sending line number `fail_at`, as a stream relayed from an upstream that
    /// goes away does.
    fail_at: Option<u32>,
}

/// `GET /api/ticks?n=5&ms=200`: a streaming response, one line every `ms`, each with the
/// serving process's pid (so a test can see that a stream spanning a restart was served to its
/// end by the worker that started it). With `fail_at`, the stream fails mid-way: apphost cuts
/// the response (the client never sees it end as if it were whole) and logs it.
async fn ticks(Query(q): Query<TicksQuery>) -> Response {
    let n = q.n.unwrap_or(5);
    let every = Duration::from_millis(q.ms.unwrap_or(200));
    let fail_at = q.fail_at;
    let pid = std::process::id();
    let lines = futures_util::stream::unfold(0u32, move |i| async move {
        if i == n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        if fail_at == Some(i) {
            let e = std::io::Error::other("the upstream went away");
            return Some((Err(e), n));
        }
        let line = Bytes::from(format!("tick {i} pid {pid}\n"));
        Some((Ok(line), i + 1))
    });
    ([("content-type", "text/plain")], Body::from_stream(lines)).into_response()
}

#[derive(Deserialize)]
struct WsQuery {
    /// `ignore`: do not watch for the drain (the host then closes the socket at
    /// `stream_grace`, if configured, with the same close code 1001).
    drain: Option<String>,
    /// Instead of the echo: send binary messages of this many bytes as fast as the client takes
    /// them, never reading and never watching the drain (the host's `stream_grace` ends it).
    firehose: Option<usize>,
}

/// `GET /api/ws`: a WebSocket. It greets with `hello pid PID`, then echoes every text message.
/// When this worker begins draining it says goodbye itself: a close frame 1001 ("going away"),
/// after which the client reconnects and lands on the new worker. An echo is sent whole before
/// the close (the loop handles one event at a time), so a client that re-sends what was not
/// echoed loses nothing.
async fn ws(upgrade: WebSocketUpgrade, Query(q): Query<WsQuery>) -> Response {
    if let Some(size) = q.firehose {
        return upgrade.on_upgrade(move |socket| firehose(socket, size));
    }
    let watch_drain = q.drain.as_deref() != Some("ignore");
    upgrade.on_upgrade(move |socket| echo_socket(socket, watch_drain))
}

/// Binary messages of `size` bytes, message `i` filled with `i % 256`, until a send fails. Each
/// `send` waits until its message is written, so a client that reads nothing holds one message.
async fn firehose(mut socket: WebSocket, size: usize) {
    for i in 0u64.. {
        let m = vec![i as u8; size];
        if socket.send(Message::Binary(m.into())).await.is_err() {
            return;
        }
    }
}

async fn echo_socket(mut socket: WebSocket, watch_drain: bool) {
    let hello = format!("hello pid {}", std::process::id());
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let drain = async {
        if watch_drain {
            apphost::draining().await
        } else {
            std::future::pending().await
        }
    };
    tokio::pin!(drain);
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                // Pings are answered by axum; binary is not part of this echo.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            },
            () = &mut drain => {
                let bye = CloseFrame { code: close_code::AWAY, reason: "restarting".into() };
                let _ = socket.send(Message::Close(Some(bye))).await;
                // Read until the client's own close frame (or the end), as the closing
                // handshake asks; the host's stream_grace bounds a client that never answers.
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
                return;
            }
        }
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Milliseconds between events (default 200).
    ms: Option<u64>,
}

/// `GET /api/events`: server-sent events, `id: N` and `data: tick N pid PID` every `ms`,
/// starting after the `Last-Event-ID` the client sends when it reconnects. When this worker
/// begins draining, the stream ends with an event carrying `retry: 100` (the client reconnects
/// after 100 ms, to the new worker, and resumes from its last id).
async fn events(headers: HeaderMap, Query(q): Query<EventsQuery>) -> impl IntoResponse {
    let every = Duration::from_millis(q.ms.unwrap_or(200));
    let first = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |last| last + 1);
    let pid = std::process::id();
    // The state: the next id, or None once the goodbye has been sent.
    let stream = futures_util::stream::unfold(Some(first), move |next| async move {
        let n = next?;
        if n > first {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = apphost::draining() => {
                    let bye = Event::default()
                        .event("bye")
                        .retry(Duration::from_millis(100))
                        .data("this worker is going away; reconnect");
                    return Some((Ok::<_, std::convert::Infallible>(bye), None));
                }
            }
        }
        let tick = Event::default()
            .id(n.to_string())
            .data(format!("tick {n} pid {pid}"));
        Some((Ok(tick), Some(n + 1)))
    });
    Sse::new(stream)
}

/// Anything else: a `CONNECT` tunnel, or the router's own 404, in JSON.
async fn fallback(req: Request) -> Response {
    if req.method() == Method::CONNECT {
        return tunnel(req).await;
    }
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such route" })),
    )
        .into_response()
}

/// `CONNECT ip:port`: a forward proxy's tunnel, to loopback addresses only (an example, not an
/// open proxy). The `200` hands the connection over (hyper's `OnUpgrade`, as for a WebSocket);
/// the bytes are then copied both ways until either side closes. apphost counts the tunnel as a
/// connection in flight: a restart's drain waits for it, and `stream_grace` closes it.
async fn tunnel(mut req: Request) -> Response {
    let to = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback());
    let Some(to) = to else {
        return (StatusCode::FORBIDDEN, "tunnels go to a loopback ip:port\n").into_response();
    };
    let upstream = match tokio::net::TcpStream::connect(to).await {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("{to}: {e}\n")).into_response(),
    };
    let handed_over = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(client) = handed_over.await {
            let (mut client, mut upstream) = (TokioIo::new(client), upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    StatusCode::OK.into_response()
}

fn main() -> ExitCode {
    let cli = clap::Command::new("axum_app")
        .about("An axum application hosted by apphost")
        .arg(
            clap::Arg::new("motd")
                .long("motd")
                .global(true)
                .default_value("hello from axum")
                .help("What GET /api/hello answers"),
        )
        .subcommand(
            Host::command()
                .name("serve")
                .about("Serve the app with apphost (run, check, restart, status, shutdown)"),
        )
        .subcommand(clap::Command::new("routes").about("Print the router's routes"))
        .subcommand(
            clap::Command::new("standalone")
                .about(
                    "Serve the same router with plain `axum::serve` (no apphost; for comparison)",
                )
                .arg(
                    clap::Arg::new("addr")
                        .long("addr")
                        .default_value("127.0.0.1:8301"),
                ),
        )
        .subcommand_required(true);
    let matches = cli.get_matches();
    let motd = matches
        .get_one::<String>("motd")
        .cloned()
        .unwrap_or_default();
    match matches.subcommand() {
        Some(("serve", serve)) => Host::new()
            .service("app", router(motd))
            .default_config(include_str!("axum_app.yaml"))
            .run_with(serve),
        Some(("routes", _)) => {
            for r in [
                "GET /api/hello",
                "POST /api/users",
                "GET /api/users/{id}",
                "POST /api/echo",
                "GET /api/ticks",
                "GET /api/ws",
                "GET /api/events",
                "GET /pid",
            ] {
                println!("{r}");
            }
            ExitCode::SUCCESS
        }
        Some(("standalone", m)) => {
            let addr = m.get_one::<String>("addr").cloned().unwrap_or_default();
            match standalone(&addr, router(motd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("axum_app: {addr}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => ExitCode::from(2),
    }
}

/// The router served as axum's documentation serves one: a tokio runtime, a listener,
/// `axum::serve`. No restarts, no drain: what apphost adds is what this lacks.
fn standalone(addr: &str, app: Router) -> std::io::Result<()> {
    // A subscriber, as an app has (apphost installs its own in a worker): `RUST_LOG`, else info.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app).await
    })
}
