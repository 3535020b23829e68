//! [`Launch`]: how the supervisor starts the program again, as a worker or for a preflight check.
//!
//! A program that calls [`crate::Host::main`] has apphost's command line as its own, so a
//! worker is `EXE __worker [--config FILE]` and a preflight `EXE check [-c FILE]`, the form every
//! apphost binary has understood (a supervisor may start an older or newer executable).
//!
//! A program with its own command line nests apphost's under a subcommand of its own
//! ([`crate::Host::command`], [`crate::Host::run_with`]): `myapp --db URL serve run`. apphost
//! cannot know what the program needs before its `serve` (global options, other arguments), and
//! the program may build its handlers from them. So it is started again with **the same
//! arguments** `run` was given, and [`ENV_ROLE`] tells `run` to be a worker (or a check) instead
//! of a supervisor, with the config file in [`ENV_ROLE_CONFIG`]. The program runs its `main`
//! again exactly as before, builds the same handlers, and reaches `run_with` the same way.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set by the supervisor for a nested program: `worker` or `check`.
pub(crate) const ENV_ROLE: &str = "APPHOST_ROLE";
/// With [`ENV_ROLE`]: the config file (absent: the embedded default).
pub(crate) const ENV_ROLE_CONFIG: &str = "APPHOST_ROLE_CONFIG";

/// How the program's command line reaches apphost's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Launch {
    /// apphost's command line is the program's ([`crate::Host::main`]).
    Apphost,
    /// Nested in the program's own; these are the arguments `run` was started with (without the
    /// program name).
    Nested(Vec<OsString>),
}

/// What a started process is to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A worker (a generation, or a standby).
    Worker,
    /// `check`: validate the config and exit (the preflight of a new executable or config).
    Check,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Check => "check",
        }
    }

    /// The role the supervisor gave this process, if any, and its config file.
    pub(crate) fn from_env() -> Option<(Role, Option<PathBuf>)> {
        let role = match std::env::var(ENV_ROLE).ok()?.as_str() {
            "worker" => Role::Worker,
            "check" => Role::Check,
            _ => return None,
        };
        Some((role, std::env::var_os(ENV_ROLE_CONFIG).map(PathBuf::from)))
    }
}

impl Launch {
    /// The command that starts `exe` as `role` with `config` (`None`: the embedded default).
    /// The caller adds descriptors, environment and stdio.
    pub(crate) fn command(&self, exe: &Path, role: Role, config: Option<&Path>) -> Command {
        let mut cmd = Command::new(exe);
        match self {
            Launch::Apphost => {
                let (sub, flag) = match role {
                    Role::Worker => ("__worker", "--config"),
                    Role::Check => ("check", "-c"),
                };
                cmd.arg(sub);
                if let Some(c) = config {
                    cmd.arg(flag).arg(c);
                }
                cmd.env_remove(ENV_ROLE).env_remove(ENV_ROLE_CONFIG);
            }
            Launch::Nested(args) => {
                cmd.args(args).env(ENV_ROLE, role.as_str());
                match config {
                    Some(c) => cmd.env(ENV_ROLE_CONFIG, c),
                    None => cmd.env_remove(ENV_ROLE_CONFIG),
                };
            }
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(cmd: &Command) -> (Vec<String>, Vec<(String, Option<String>)>) {
        let args = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut envs: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        envs.sort();
        (args, envs)
    }

    #[test]
    fn apphost_programs_get_the_subcommands_every_version_knows() {
        let exe = Path::new("/bin/app");
        let cfg = Some(Path::new("/etc/s.yaml"));
        let (args, envs) = parts(&Launch::Apphost.command(exe, Role::Worker, cfg));
        assert_eq!(args, ["__worker", "--config", "/etc/s.yaml"]);
        assert!(envs.iter().all(|(_, v)| v.is_none()), "{envs:?}");
        let (args, _) = parts(&Launch::Apphost.command(exe, Role::Check, None));
        assert_eq!(args, ["check"]);
    }

    #[test]
    fn nested_programs_get_their_own_arguments_and_a_role() {
        let exe = Path::new("/bin/app");
        let launch = Launch::Nested(vec![
            "--db".into(),
            "x".into(),
            "serve".into(),
            "run".into(),
        ]);
        let (args, envs) = parts(&launch.command(exe, Role::Check, Some(Path::new("/s.yaml"))));
        assert_eq!(args, ["--db", "x", "serve", "run"]);
        assert_eq!(
            envs,
            [
                (ENV_ROLE.to_string(), Some("check".to_string())),
                (ENV_ROLE_CONFIG.to_string(), Some("/s.yaml".to_string())),
            ]
        );
        let (_, envs) = parts(&launch.command(exe, Role::Worker, None));
        assert_eq!(
            envs,
            [
                (ENV_ROLE.to_string(), Some("worker".to_string())),
                (ENV_ROLE_CONFIG.to_string(), None),
            ]
        );
    }
}
