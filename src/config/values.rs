//! Typed reads of config values, shared by the tree walk ([`super::walk`]) and
//! [`Params`](super::Params): each reports "expected X, found Y" at the value's file:line:col,
//! unknown keys get a "did you mean" hint (case-insensitive edit distance), and paths resolve
//! against the config file's directory. `log.level` is checked here too, so `check` and the
//! `APPHOST_LOG` variable use one rule.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::duration::parse_duration;
use super::error::{ConfigError, Pos};
use super::tree::{Node, Value};

/// `parent.key`, or `key` at the top.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `expected {expected}, found {what node is}` at the node.
pub(super) fn type_error(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
    expected: &str,
) -> ConfigError {
    ConfigError::new(
        file,
        Some(node.pos),
        key_path,
        format!("expected {expected}, found {}", node.describe()),
    )
}

/// An unknown key, with the nearest of `allowed` as a hint (or the list of valid keys).
pub(super) fn unknown_key(
    file: Option<&Path>,
    name: &str,
    pos: Pos,
    key_path: &str,
    allowed: &[&str],
) -> ConfigError {
    let hint = match nearest(name, allowed) {
        Some(s) => format!("did you mean {s:?}?"),
        None if allowed.is_empty() => "no keys are allowed here".to_string(),
        None => format!("valid keys: {}", allowed.join(", ")),
    };
    ConfigError::new(
        file,
        Some(pos),
        key_path,
        format!("unknown key {name:?} ({hint})"),
    )
}

/// The level names `log.level` takes.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Check `log.level`: a level name, or tracing filter directives `TARGET=LEVEL` separated by
/// commas (`info,apphost=debug`). A bare word that is not a level is refused, although tracing
/// would take it as a target name: `verbose` would then silence every line.
pub(crate) fn log_level(text: &str) -> Result<(), String> {
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.rsplit_once('=') {
            Some((t, l)) => (Some(t), l.trim()),
            None => (None, directive),
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let hint = match nearest(level, LOG_LEVELS) {
                Some(s) => format!("did you mean {s:?}?"),
                None => format!(
                    "expected one of {}, or TARGET=LEVEL directives such as info,apphost=debug",
                    LOG_LEVELS.join(", ")
                ),
            };
            let what = match target {
                Some(t) => format!("unknown log level {level:?} for {t:?}"),
                None => format!("unknown log level {level:?}"),
            };
            return Err(format!("{what} ({hint})"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(drop)
        .map_err(|e| format!("invalid log filter {text:?}: {e}"))
}

/// The entry of `allowed` closest to `name` (case-insensitive edit distance at most 2, and less
/// than the length of `name`), if any.
pub(crate) fn nearest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let name_len = name.chars().count();
    allowed
        .iter()
        .map(|a| (edit_distance(&name.to_lowercase(), &a.to_lowercase()), *a))
        .filter(|&(d, _)| d <= 2 && d < name_len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, a)| a)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of adjacent characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// A string value.
pub(super) fn expect_str<'n>(
    file: Option<&Path>,
    node: &'n Node,
    key_path: &str,
) -> Result<&'n str, ConfigError> {
    node.as_str()
        .ok_or_else(|| type_error(file, node, key_path, "a string"))
}

/// A boolean value.
pub(super) fn expect_bool(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<bool, ConfigError> {
    node.as_bool()
        .ok_or_else(|| type_error(file, node, key_path, "a boolean"))
}

/// Permission bits (`unix_mode: "0660"`): an octal string, quoted (YAML would read `0660` as a
/// number, and not always an octal one).
pub(super) fn expect_mode(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<u32, ConfigError> {
    let Value::Str(s) = &node.value else {
        return Err(type_error(
            file,
            node,
            key_path,
            "an octal mode in quotes, e.g. \"0660\"",
        ));
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    (!digits.is_empty() && digits.len() <= 4)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            let m = format!("invalid mode {s:?} (expected octal permission bits, e.g. \"0660\")");
            ConfigError::new(file, Some(node.pos), key_path, m)
        })
}

/// A duration: a string such as `10s`. A bare number gets the duration message, which says a
/// unit is needed.
pub(super) fn expect_duration(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<Duration, ConfigError> {
    let text = match &node.value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        _ => return Err(type_error(file, node, key_path, "a duration such as 10s")),
    };
    parse_duration(&text).map_err(|m| ConfigError::new(file, Some(node.pos), key_path, m))
}

/// A non-empty path, resolved against `base_dir` when relative.
pub(super) fn expect_path(
    file: Option<&Path>,
    base_dir: &Path,
    node: &Node,
    key_path: &str,
) -> Result<PathBuf, ConfigError> {
    let s = expect_str(file, node, key_path)?;
    if s.is_empty() {
        return Err(ConfigError::new(
            file,
            Some(node.pos),
            key_path,
            "the path is empty",
        ));
    }
    Ok(resolve(base_dir, Path::new(s)))
}

/// `base_dir.join(p)` without `.` components.
pub(super) fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    base_dir
        .join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}
