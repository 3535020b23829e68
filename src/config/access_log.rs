//! A server's `access_log` key: where its access log goes and in which format.
//!
//! ```yaml
//! access_log: { path: /var/log/app/access.log, format: json }   # or: stdout | stderr
//! access_log: stdout                                            # format: combined
//! access_log: false                                             # off (the default)
//! access_log: { path: access.log, echo_id: false }              # ids not in responses
//! ```
//!
//! A server with an access log gives each request an id (`serve::exchange`, `observe::request_id`),
//! logged and returned in the response's `x-request-id`; `echo_id: false` keeps it out of the
//! response (it is still logged and in the request's tracing span), for operators who do not
//! show internal ids to clients (Envoy's default), and it saves the header's cost: about 370
//! instructions of a keep-alive `hello` request's 8,900 (BENCHMARKS (ak)).
//!
//! A relative file path resolves against the config file's directory. The file itself is
//! opened (created, appended to) by each worker when it starts; `check` only makes sure the path
//! can be a file: its directory exists and it is not a directory.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, Pos};
use super::tree::{Node, Value};
use super::values::{expect_bool, expect_str, join, resolve, type_error, unknown_key};

/// `access_log: { path, format }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessLogConfig {
    /// Where lines go.
    pub target: LogTarget,
    /// How a line looks.
    pub format: AccessLogFormat,
    /// The request's id goes into the response's `x-request-id` (`echo_id`, default true).
    pub echo_id: bool,
}

/// Where an access log's lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LogTarget {
    /// The process's standard output (the supervisor's, which every worker inherits).
    Stdout,
    /// The process's standard error (copied through the supervisor, line by line).
    Stderr,
    /// A file, opened for appending (absolute after resolution).
    File(PathBuf),
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("stdout"),
            LogTarget::Stderr => f.write_str("stderr"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// An access log line's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessLogFormat {
    /// The Apache/nginx "combined" format.
    Combined,
    /// One JSON object per line.
    Json,
}

const KEYS: &[&str] = &["path", "format", "echo_id"];

/// Read the `access_log` value at `node` (`key_path` names it): `None` when it is `false`.
pub(super) fn parse(
    file: Option<&Path>,
    base_dir: &Path,
    node: &Node,
    key_path: &str,
) -> Result<Option<AccessLogConfig>, ConfigError> {
    let err = |pos: Pos, kp: &str, msg: String| ConfigError::new(file, Some(pos), kp, msg);
    let mut echo_id = true;
    let (path_node, path_kp, format) = match &node.value {
        Value::Bool(false) => return Ok(None),
        Value::Str(_) => (node, key_path.to_string(), AccessLogFormat::Combined),
        Value::Map(entries) => {
            for (k, _) in entries {
                if !KEYS.contains(&k.name.as_str()) {
                    return Err(unknown_key(
                        file,
                        &k.name,
                        k.pos,
                        &join(key_path, &k.name),
                        KEYS,
                    ));
                }
            }
            let get = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
            let format = match get("format") {
                None => AccessLogFormat::Combined,
                Some(n) => {
                    let kp = join(key_path, "format");
                    match expect_str(file, n, &kp)? {
                        "combined" => AccessLogFormat::Combined,
                        "json" => AccessLogFormat::Json,
                        other => {
                            return Err(err(
                                n.pos,
                                &kp,
                                format!(
                                    "unknown access log format {other:?} (expected combined or json)"
                                ),
                            ));
                        }
                    }
                }
            };
            if let Some(n) = get("echo_id") {
                echo_id = expect_bool(file, n, &join(key_path, "echo_id"))?;
            }
            let Some(p) = get("path") else {
                return Err(err(
                    node.pos,
                    key_path,
                    "missing key \"path\" (a file, stdout or stderr)".into(),
                ));
            };
            (p, join(key_path, "path"), format)
        }
        _ => {
            return Err(type_error(
                file,
                node,
                key_path,
                "a map { path, format, echo_id }, a path, stdout, stderr or false",
            ));
        }
    };
    let text = expect_str(file, path_node, &path_kp)?.trim();
    let target = match text {
        "" => return Err(err(path_node.pos, &path_kp, "the path is empty".into())),
        "stdout" | "-" => LogTarget::Stdout,
        "stderr" => LogTarget::Stderr,
        p => {
            let path = resolve(base_dir, Path::new(p));
            if path.is_dir() || p.ends_with('/') {
                return Err(err(
                    path_node.pos,
                    &path_kp,
                    format!("{p:?} is a directory (expected a file to append to)"),
                ));
            }
            match path.parent() {
                Some(dir) if dir.is_dir() => {}
                Some(dir) => {
                    return Err(err(
                        path_node.pos,
                        &path_kp,
                        format!(
                            "the directory {:?} does not exist (the log file is created in it)",
                            dir.display().to_string()
                        ),
                    ));
                }
                None => {}
            }
            LogTarget::File(path)
        }
    };
    Ok(Some(AccessLogConfig {
        target,
        format,
        echo_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, Format, parse_str};

    fn load(server_extra: &str) -> Result<crate::config::Config, ConfigError> {
        let dir = std::env::temp_dir();
        let text = format!(
            "servers:\n  s1:\n    address: \"127.0.0.1:1\"\n{server_extra}    routes: {{ \"/\": hello }}\n"
        );
        parse_str(
            &text,
            Format::Yaml,
            ConfigSource::File(dir.join("server.yaml")),
        )
    }

    #[test]
    fn off_by_default_and_with_false() {
        assert_eq!(load("").unwrap().servers[0].access_log, None);
        assert_eq!(
            load("    access_log: false\n").unwrap().servers[0].access_log,
            None
        );
    }

    #[test]
    fn shorthand_map_and_relative_paths() {
        let c = load("    access_log: stdout\n").unwrap();
        assert_eq!(
            c.servers[0].access_log,
            Some(AccessLogConfig {
                target: LogTarget::Stdout,
                format: AccessLogFormat::Combined,
                echo_id: true,
            })
        );
        let c = load("    access_log: { path: access.log, format: json }\n").unwrap();
        let a = c.servers[0].access_log.clone().unwrap();
        assert_eq!((a.format, a.echo_id), (AccessLogFormat::Json, true));
        let c = load("    access_log: { path: access.log, echo_id: false }\n").unwrap();
        assert!(!c.servers[0].access_log.as_ref().unwrap().echo_id);
        let e = load("    access_log: { path: access.log, echo_id: no thanks }\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("servers.s1.access_log.echo_id: expected a boolean"),
            "{e}"
        );
        assert_eq!(
            a.target,
            LogTarget::File(std::env::temp_dir().join("access.log"))
        );
    }

    #[test]
    fn mistakes_name_line_column_and_key() {
        let e = load("    access_log: { path: stderr, format: xml }\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(":4:41: servers.s1.access_log.format: unknown access log format \"xml\""),
            "{s}"
        );
        let e = load("    access_log: { path: stderr, fromat: json }\n").unwrap_err();
        assert!(e.to_string().contains("did you mean \"format\""), "{e}");
        let e = load("    access_log: { format: json }\n").unwrap_err();
        assert!(e.to_string().contains("missing key \"path\""), "{e}");
        let e = load("    access_log: /nonexistent-dir-apphost/a.log\n").unwrap_err();
        assert!(
            e.to_string()
                .contains(":4:17: servers.s1.access_log: the directory"),
            "{e}"
        );
        let e = load("    access_log: 3\n").unwrap_err();
        assert!(e.to_string().contains("expected a map"), "{e}");
    }
}
