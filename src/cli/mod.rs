//! The command line: `run`, `check`, the control commands `status`, `restart` and `shutdown`
//! (which talk to a running host over its control socket through [`client`]), `rollout` (many
//! hosts, canaries first: [`rollout`]), and the hidden `__worker` entry point a supervisor
//! starts.
//!
//! It is the whole command line of a program that calls [`crate::Host::main`], or a subcommand
//! of the program's own ([`command`], [`main_with`]); how workers are started in each case is
//! [`crate::launch`]'s business.
//!
//! Exit codes: 0 success; 1 the host failed at run time (the first worker could not start, a
//! forced shutdown), or a control command failed or could not reach the host; 2 bad input
//! (config errors, bad arguments).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) mod client;
mod rollout;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::handler::Registry;
use crate::launch::{Launch, Role};
use crate::plan::Plan;

#[derive(Parser, Debug)]
#[command(name = "apphost", about = "A zero-downtime application host", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host in the foreground (the supervisor; its PID never changes across restarts).
    Run {
        /// Config file (.yaml, .yml or .toml). Default: $APPHOST_CONFIG, ./server.yaml,
        /// ./server.toml, ./config/server.yaml, ./config/server.toml, else the embedded default.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the config and print the servers, listeners and routes it would start.
    Check {
        /// Config file (same lookup as `run`).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show a running host's state: pids, generation, uptime, listeners, the last restart.
    Status {
        #[command(flatten)]
        target: client::Target,
    },
    /// Restart a running host and wait for the outcome (new worker pid and handoff time; exit 1
    /// with the reason if it failed, the old worker serving on).
    Restart {
        /// Executable for the new worker (default: the one recorded at start).
        #[arg(long, value_name = "PATH")]
        exe: Option<PathBuf>,
        #[command(flatten)]
        target: client::Target,
    },
    /// Shut a running host down: every worker drains, then the supervisor exits.
    Shutdown {
        /// Wait until the host has exited.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Restart many hosts onto a new executable: canaries first, a bake that watches their
    /// 5xx share and readiness, then the rest; halt (and with --rollback, go back) on failure.
    Rollout(rollout::Args),
    /// Reopen the access log files (after logrotate renamed them): every worker, draining ones
    /// too, writes what it holds to the old file and opens the path anew.
    #[command(name = "reopen-logs")]
    ReopenLogs {
        #[command(flatten)]
        target: client::Target,
    },
    /// A worker process (started by the supervisor, not by hand).
    #[command(name = "__worker", hide = true)]
    Worker {
        /// The config file; absent = the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What `--version` says: `apphost 0.1.0` for apphost itself, `myapp 1.2.0 (apphost 0.1.0)`
/// for a program that named itself ([`crate::Host::program`]), `myapp (apphost 0.1.0)` for one
/// that did not (`argv0` is the name it was started by).
fn name_and_version(program: Option<(&str, &str)>, argv0: Option<&str>) -> (String, String) {
    const APPHOST: &str = env!("CARGO_PKG_VERSION");
    let exe_name = argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("apphost");
    match program {
        Some(("apphost", v)) if v == APPHOST => ("apphost".into(), APPHOST.into()),
        Some((name, version)) => (name.into(), format!("{version} (apphost {APPHOST})")),
        None if exe_name == "apphost" => ("apphost".into(), APPHOST.into()),
        None => (exe_name.into(), format!("(apphost {APPHOST})")),
    }
}

/// Parse the process arguments and run them with the handlers in `registry`; `program` is the
/// name and version the program gave itself, if any.
pub(crate) fn main(registry: &Registry, program: Option<(&str, &str)>) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let argv0 = std::env::args().next();
    let (name, version) = name_and_version(program, argv0.as_deref());
    // clap keeps `'static` strings (its `string` feature is off); this runs once per process.
    let parsed = Cli::command()
        .name(&*name.leak())
        .version(&*version.leak())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => dispatch(registry, cli.command, Launch::Apphost),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// apphost's commands as a clap command, for a program to nest in its own command line.
pub(crate) fn command() -> clap::Command {
    use clap::Subcommand;
    Command::augment_subcommands(
        clap::Command::new("apphost")
            .about("A zero-downtime application host")
            .subcommand_required(true)
            .arg_required_else_help(true),
    )
}

/// Run the apphost command in `matches` (parsed with [`command`]) with the handlers in
/// `registry`. The program is nested: workers are started with its own arguments.
pub(crate) fn main_with(registry: &Registry, matches: &clap::ArgMatches) -> ExitCode {
    use clap::FromArgMatches;
    match Command::from_arg_matches(matches) {
        Ok(c) => dispatch(
            registry,
            c,
            Launch::Nested(std::env::args_os().skip(1).collect()),
        ),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(2)
        }
    }
}

fn dispatch(registry: &Registry, command: Command, launch: Launch) -> ExitCode {
    // A nested program started again by its supervisor, with the arguments of its `run`: a
    // worker or a check (see `crate::launch`).
    if let (Command::Run { .. }, Launch::Nested(_), Some((role, config))) =
        (&command, &launch, Role::from_env())
    {
        return match role {
            Role::Worker => crate::worker::main(registry, crate::worker::WorkerArgs { config }),
            Role::Check => check(registry, config.as_deref()),
        };
    }
    match command {
        Command::Run { config } => run(registry, config.as_deref(), launch),
        Command::Check { config } => check(registry, config.as_deref()),
        Command::Status { target } => client::run_command(client::Command::Status, &target),
        Command::Restart { exe, target } => {
            client::run_command(client::Command::Restart { exe }, &target)
        }
        Command::Shutdown { wait, target } => {
            client::run_command(client::Command::Shutdown { wait }, &target)
        }
        Command::Rollout(args) => rollout::run(args),
        Command::ReopenLogs { target } => client::run_command(client::Command::ReopenLogs, &target),
        Command::Worker { config } => {
            crate::worker::main(registry, crate::worker::WorkerArgs { config })
        }
    }
}

fn run(registry: &Registry, explicit: Option<&Path>, launch: Launch) -> ExitCode {
    // A supervisor that has just re-executed itself takes over its previous image's state.
    if let Some(code) = crate::supervisor::resume_from_env() {
        return code;
    }
    let config = match Config::find(explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apphost: {e}");
            return ExitCode::from(2);
        }
    };
    // Everything a worker would build (routes, handler params, TLS pairs), checked here so a
    // mistake is reported with exit 2 before any process starts.
    if let Err(e) = Plan::build(&config, registry, None) {
        eprintln!("apphost: {e}");
        return ExitCode::from(2);
    }
    if let Some(w) = crate::logging::init(&config.log) {
        // On stderr as it is: the level in force may hide warnings, and this one is about it.
        eprintln!("apphost: warning: {w}");
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    match &config.source {
        crate::config::ConfigSource::File(p) => tracing::info!("using config {}", p.display()),
        crate::config::ConfigSource::Embedded => {
            tracing::info!("no config file found; using the embedded default")
        }
    }
    let exe = match recorded_exe() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    let config_path = match &config.source {
        crate::config::ConfigSource::File(p) => Some(p.clone()),
        crate::config::ConfigSource::Embedded => None,
    };
    crate::supervisor::run(crate::supervisor::Options {
        exe,
        launch,
        config_path,
        config,
    })
}

fn check(registry: &Registry, explicit: Option<&Path>) -> ExitCode {
    // The preflight of a supervisor upgrade: can this build take over the running one's state?
    if let Some(code) = crate::supervisor::check_handover_from_env() {
        return code;
    }
    let config = match Config::find(explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apphost: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &config.warnings {
        eprintln!("apphost: warning: {w}");
    }
    match Plan::build(&config, registry, None) {
        Ok(plan) => {
            for w in addresses_in_use(&config) {
                eprintln!("apphost: warning: {w}");
            }
            print!("{}", plan.report(&config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apphost: {e}");
            ExitCode::from(2)
        }
    }
}

/// The listen addresses that cannot be bound now, each as a warning: `run` would fail on them
/// unless what holds them lets go (or it is this config's own running host). Each address is
/// bound and closed at once; port 0 is skipped.
fn addresses_in_use(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for s in &config.servers {
        let https = s.https.iter().flat_map(|h| &h.addresses);
        let all = s
            .http
            .iter()
            .map(|a| ("http", a))
            .chain(https.map(|a| ("https", a)));
        for (scheme, a) in all {
            // Port 0 binds anything; systemd's sockets are not ours to bind; a Unix path is
            // only looked at (binding it would replace a stale file).
            if a.port() == Some(0) || a.systemd_name().is_some() {
                continue;
            }
            let usable = match a.unix_path() {
                Some(p) => match crate::control::probe(p) {
                    Ok(crate::control::Probe::Alive) => {
                        Err("another running process listens on it".to_string())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                None => crate::serve::listen::bind(a, None)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = usable {
                out.push(format!(
                    "servers.{}: {scheme}://{a} cannot be bound now ({e}); `run` fails on it \
                     unless whatever holds it lets go (fine if it is this config's own running \
                     host)",
                    s.name
                ));
            }
        }
    }
    out
}

/// The executable path restarts run and the watcher watches: the path the program was started
/// by (`argv[0]` made absolute, or found on `PATH`), so a symlink that is switched to a new
/// version is followed; `/proc/self/exe` only as a last resort, since it names the file that was
/// running at start even after it has been replaced.
fn recorded_exe() -> std::io::Result<PathBuf> {
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    if let Some(a) = argv0 {
        if a.components().count() > 1 {
            let abs = if a.is_absolute() {
                a
            } else {
                std::env::current_dir()?.join(a)
            };
            if abs.is_file() {
                return Ok(abs);
            }
        } else if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let cand = dir.join(&a);
                if cand.is_file() && dir.is_absolute() {
                    return Ok(cand);
                }
            }
        }
    }
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_names_itself_and_apphost() {
        let v = env!("CARGO_PKG_VERSION");
        let nv = |p, a| name_and_version(p, a);
        assert_eq!(
            nv(None, Some("/usr/bin/apphost")),
            ("apphost".into(), v.into())
        );
        assert_eq!(
            nv(Some(("myapp", "1.2.0")), Some("./myapp")),
            ("myapp".into(), format!("1.2.0 (apphost {v})"))
        );
        assert_eq!(
            nv(None, Some("/opt/myapp/bin/myapp")),
            ("myapp".into(), format!("(apphost {v})"))
        );
    }
}
