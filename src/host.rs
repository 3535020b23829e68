//! [`Host`]: the builder a program starts from. It holds the handler registry (name → factory)
//! and runs the command line (`run`, `check`, `restart`, … and the hidden worker entry point).
//!
//! The `apphost` binary is `Host::with_builtins().main()`. A user's own binary registers its
//! handlers on top and gets every subcommand:
//!
//! ```no_run
//! use apphost::{Host, Request, Response, Body};
//! use std::sync::Arc;
//!
//! fn main() -> std::process::ExitCode {
//!     Host::with_builtins()
//!         .handler("greet", |_req: Request, _params: Arc<apphost::Params>| async {
//!             Response::new(Body::from("hi\n"))
//!         })
//!         .main()
//! }
//! ```

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{ConfigError, ParamType, Params};
use crate::handler::{Factory, FnHandler, Handler, Registry, Request, Response};

/// The application host: a handler registry plus the command line.
#[derive(Clone, Debug, Default)]
pub struct Host {
    registry: Registry,
    default_config: Option<&'static str>,
    program: Option<(&'static str, &'static str)>,
}

impl Host {
    /// A host with no handlers registered.
    pub fn new() -> Host {
        Host::default()
    }

    /// A host with the built-in handlers (`hello`, `pid`, `sleep`, `static`, `health`, `ready`,
    /// `metrics`).
    pub fn with_builtins() -> Host {
        let mut h = Host::new();
        crate::handlers::register_builtins(&mut h.registry);
        // `metrics` is the product layer's (it reads the host's counters); a worker registers
        // its own, with its link to the supervisor, over this one.
        h.registry
            .insert(crate::observe::HANDLER_NAME, crate::observe::factory(None));
        h
    }

    /// Register `name` as an async function of the request and the route's params. Any params
    /// are accepted; [`Host::handler_with_params`] declares the ones it reads, so a typo or a
    /// wrong type is a config error.
    pub fn handler<F, Fut>(self, name: &str, f: F) -> Host
    where
        F: Fn(Request, Arc<Params>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.handler_checked(name, None, f)
    }

    /// [`Host::handler`], with the params it reads declared with their types: at config load
    /// (`check`, `run`, every restart) a key not declared is an error naming the nearest
    /// declared one, and a value of the wrong type an error at its line and column, as for the
    /// built-in handlers. The handler then reads them with [`Params::str`] and the like.
    ///
    /// ```no_run
    /// use apphost::{Body, Host, ParamType, Params, Request, Response};
    /// use std::sync::Arc;
    ///
    /// fn main() -> std::process::ExitCode {
    ///     Host::with_builtins()
    ///         // config:  "/greet": { handler: greet, who: Alice }
    ///         .handler_with_params("greet", &[("who", ParamType::Str)], |_req: Request, p: Arc<Params>| async move {
    ///             let who = p.str("who").ok().flatten().unwrap_or("world").to_string();
    ///             Response::new(Body::from(format!("hello, {who}\n")))
    ///         })
    ///         .main()
    /// }
    /// ```
    pub fn handler_with_params<F, Fut>(self, name: &str, params: &[(&str, ParamType)], f: F) -> Host
    where
        F: Fn(Request, Arc<Params>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let declared = params.iter().map(|(k, t)| (k.to_string(), *t)).collect();
        self.handler_checked(name, Some(declared), f)
    }

    fn handler_checked<F, Fut>(
        mut self,
        name: &str,
        declared: Option<Vec<(String, ParamType)>>,
        f: F,
    ) -> Host
    where
        F: Fn(Request, Arc<Params>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let f = Arc::new(f);
        let factory: Factory = Arc::new(move |params: &Params| {
            if let Some(d) = &declared {
                let keys: Vec<(&str, ParamType)> =
                    d.iter().map(|(k, t)| (k.as_str(), *t)).collect();
                params.expect(&keys)?;
            }
            let params = Arc::new(params.clone());
            let f = f.clone();
            let h: Arc<dyn Handler> =
                Arc::new(FnHandler(move |req: Request| f(req, params.clone())));
            Ok(h)
        });
        self.registry.insert(name, factory);
        self
    }

    /// Register `name` with a factory that validates the route's params once, at config load.
    pub fn handler_factory<F, H>(mut self, name: &str, f: F) -> Host
    where
        F: Fn(&Params) -> Result<H, ConfigError> + Send + Sync + 'static,
        H: Handler,
    {
        let factory: Factory = Arc::new(move |p: &Params| {
            let h: Arc<dyn Handler> = Arc::new(f(p)?);
            Ok(h)
        });
        self.registry.insert(name, factory);
        self
    }

    /// Register `name` as a tower service: an `axum::Router` as it is, a tower-http stack, a
    /// `tower::service_fn`, anything that takes an `http::Request<`[`Body`](crate::Body)`>`.
    ///
    /// The request body streams from the connection; the response body (any
    /// `http_body::Body<Data = Bytes>`) streams back as the client takes it. An error from the
    /// service answers `500` and is logged; an error from its response body mid-way cuts that
    /// response. Each route naming `name` gets its own clone of `svc`, and each request a clone
    /// of that. The route may set `strip_prefix: true` (a wildcard route only) so the service
    /// sees the path below the route's prefix.
    ///
    /// ```no_run
    /// use apphost::Host;
    /// use axum::{Router, routing::get};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let app = Router::new().route("/users/{id}", get(|| async { "a user\n" }));
    ///     // config:  routes: { "/*rest": app }
    ///     Host::new().service("app", app).main()
    /// }
    /// ```
    pub fn service<S, B>(mut self, name: &str, svc: S) -> Host
    where
        S: tower_service::Service<Request, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<crate::BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        self.registry
            .insert(name, crate::service::factory(name, svc));
        self
    }

    /// Run `check` in each new generation before it reports ready: open a database pool, warm
    /// a cache. The generation's servers do not accept before it succeeds; an error fails the
    /// start with its message (a restart is rolled back and the asker gets the message; the
    /// first start ends the host). It must finish within `graceful_timeout`.
    ///
    /// ```no_run
    /// apphost::Host::with_builtins()
    ///     .on_start(|| async {
    ///         std::fs::metadata("/var/lib/app/db").map(|_| ()).map_err(|e| format!("database: {e}"))
    ///     })
    ///     .main();
    /// ```
    pub fn on_start<F, Fut, E>(mut self, check: F) -> Host
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let check: crate::handler::StartCheck = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.registry.add_start_check(check);
        self
    }

    /// Ship a default config (YAML) with the program: used when no config file is found, in
    /// place of apphost's own embedded default. Errors in it are reported like a file's.
    pub fn default_config(mut self, yaml: &'static str) -> Host {
        self.default_config = Some(yaml);
        self
    }

    /// Name the program and its version, for `--version` and the help text: `myapp 1.2.0
    /// (apphost 0.1.0)`. Usually `.program(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`.
    /// Without it, the name is the executable's file name and no version of its own is shown.
    pub fn program(mut self, name: &'static str, version: &'static str) -> Host {
        self.program = Some((name, version));
        self
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parse the command line and run it. Returns the process exit code.
    pub fn main(self) -> ExitCode {
        if let Some(yaml) = self.default_config {
            crate::config::set_embedded_default(yaml);
        }
        crate::cli::main(&self.registry, self.program)
    }

    /// apphost's commands (`run`, `check`, `status`, `restart`, `shutdown`) as a clap
    /// [`Command`](clap::Command), for a program that has a command line of its own: nest it as
    /// a subcommand (rename it with `.name("serve")`), and hand its matches to
    /// [`Host::run_with`].
    ///
    /// ```no_run
    /// use apphost::Host;
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let matches = clap::Command::new("myapp")
    ///         .arg(clap::Arg::new("db").long("db").global(true))
    ///         .subcommand(Host::command().name("serve"))
    ///         .subcommand(clap::Command::new("migrate"))
    ///         .subcommand_required(true)
    ///         .get_matches();
    ///     match matches.subcommand() {
    ///         // `myapp --db URL serve run -c server.yaml`, `myapp serve restart`, …
    ///         Some(("serve", serve)) => Host::with_builtins().run_with(serve),
    ///         _ => std::process::ExitCode::SUCCESS, // the program's own commands
    ///     }
    /// }
    /// ```
    pub fn command() -> clap::Command {
        crate::cli::command()
    }

    /// Run the apphost command parsed into `matches` (the [`Host::command`] subcommand's own
    /// matches). Returns the process exit code.
    ///
    /// Workers are this program started again **with the same arguments** (`myapp --db URL
    /// serve run …`) and an environment variable that makes `run` a worker: the program's
    /// `main` runs again as it did in the supervisor, builds the same handlers from the same
    /// options, and must reach `run_with` the same way. (A program that calls
    /// [`Host::main`] instead is started as `EXE __worker`.)
    pub fn run_with(self, matches: &clap::ArgMatches) -> ExitCode {
        if let Some(yaml) = self.default_config {
            crate::config::set_embedded_default(yaml);
        }
        crate::cli::main_with(&self.registry, matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn on_start_checks_run_in_order_and_the_first_error_is_the_reason() {
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, b) = (ran.clone(), ran.clone());
        let host = Host::with_builtins()
            .on_start(move || {
                let a = a.clone();
                async move {
                    a.lock().unwrap().push("pool");
                    Ok::<(), String>(())
                }
            })
            .on_start(move || {
                let b = b.clone();
                async move {
                    b.lock().unwrap().push("cache");
                    Err(std::io::Error::other("cache warm-up: redis refused"))
                }
            });
        let r = host.registry().run_start_checks().await;
        assert_eq!(r, Err("cache warm-up: redis refused".to_string()));
        assert_eq!(*ran.lock().unwrap(), ["pool", "cache"]);
        assert_eq!(Host::new().registry().run_start_checks().await, Ok(()));
    }
}
