//! The guards' config values (issue #14): sizes (`10MiB`, `512k`, `1048576`), a server's
//! `max_connections` and `max_request_body`, a route's `timeout` and `max_request_body` (read by
//! the route table through [`route_body_limit`] and [`route_timeout`]), and the top-level
//! `recycle` map. Every mistake is reported at its file:line:col with its key path.
//!
//! Sizes: an integer is bytes; a string is an integer and a unit, case-insensitive: `k`, `m`, `g`
//! and `KiB`, `MiB`, `GiB` are powers of 1024 (nginx's and PM2's `150M` mean MiB); `KB`, `MB`,
//! `GB` are powers of 1000; `B` or no unit is bytes.

use std::path::Path;
use std::time::Duration;

use super::error::ConfigError;
use super::tree::{Node, Value};
use super::values::{expect_duration, join, type_error, unknown_key};
use super::{BodyLimit, Params, RecycleConfig};

/// `max_connections` when a server does not say: what one server of one worker may hold open
/// at once (each connection is a descriptor and its buffers, some KiB, more with TLS).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

const RECYCLE_KEYS: &[&str] = &["max_requests", "max_memory", "max_age", "jitter"];

/// Parse a size such as `10MiB`, `512k`, `2GB` or `4096` (see the module doc).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size {text:?} (expected a whole number and an optional unit: B, k, m, g, \
             KiB, MiB, GiB, KB, MB, GB; e.g. 10MiB)"
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A size: an integer (bytes) or a string with a unit.
pub(crate) fn expect_size(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<u64, ConfigError> {
    match &node.value {
        Value::Str(s) => {
            parse_size(s).map_err(|m| ConfigError::new(file, Some(node.pos), key_path, m))
        }
        _ => node
            .as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| type_error(file, node, key_path, "a size such as 10MiB")),
    }
}

/// `max_request_body`: a size, or `none` (no limit; lets a route lift its server's).
pub(crate) fn body_limit(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<BodyLimit, ConfigError> {
    match &node.value {
        Value::Str(s) if s.trim().eq_ignore_ascii_case("none") => Ok(None),
        _ => expect_size(file, node, key_path).map(Some),
    }
}

/// `max_connections`: a positive integer.
pub(crate) fn max_connections(
    file: Option<&Path>,
    node: &Node,
    key_path: &str,
) -> Result<usize, ConfigError> {
    node.as_int()
        .and_then(|i| usize::try_from(i).ok())
        .filter(|&i| i >= 1)
        .ok_or_else(|| type_error(file, node, key_path, "a positive integer"))
}

/// A route's `max_request_body`: `None` when the route does not say (its server's applies).
pub(crate) fn route_body_limit(params: &Params) -> Result<Option<BodyLimit>, ConfigError> {
    match params.get("max_request_body") {
        Some(n) => body_limit(
            params.file_path(),
            n,
            &params.key_path_of("max_request_body"),
        )
        .map(Some),
        None => Ok(None),
    }
}

/// A route's `timeout`: how long its handler has to produce response headers (not zero).
pub(crate) fn route_timeout(params: &Params) -> Result<Option<Duration>, ConfigError> {
    let Some(n) = params.get("timeout") else {
        return Ok(None);
    };
    let key_path = params.key_path_of("timeout");
    let d = expect_duration(params.file_path(), n, &key_path)?;
    if d.is_zero() {
        return Err(ConfigError::new(
            params.file_path(),
            Some(n.pos),
            key_path,
            "a route timeout must not be zero (leave it out for none)",
        ));
    }
    Ok(Some(d))
}

/// The shortest route `timeout` in `config` (the watchdog ticks at least that finely).
pub(crate) fn shortest_route_timeout(config: &super::Config) -> Option<Duration> {
    config
        .servers
        .iter()
        .flat_map(|s| &s.routes)
        .filter_map(|r| route_timeout(&r.params).ok().flatten())
        .min()
}

/// `recycle: { max_requests, max_memory, max_age, jitter }`; at least one `max_*`.
pub(crate) fn recycle(
    file: Option<&Path>,
    node: &Node,
    path: &str,
) -> Result<RecycleConfig, ConfigError> {
    let entries = node
        .as_map()
        .ok_or_else(|| type_error(file, node, path, "a map"))?;
    let mut r = RecycleConfig::default();
    for (k, v) in entries {
        let p = join(path, &k.name);
        let err = |m: &str| ConfigError::new(file, Some(v.pos), p.clone(), m);
        match k.name.as_str() {
            "max_requests" => {
                let n = v
                    .as_int()
                    .and_then(|i| u64::try_from(i).ok())
                    .filter(|&i| i >= 1)
                    .ok_or_else(|| type_error(file, v, &p, "a positive integer"))?;
                r.max_requests = Some(n);
            }
            "max_memory" => {
                let n = expect_size(file, v, &p)?;
                if n == 0 {
                    return Err(err("max_memory must not be zero"));
                }
                r.max_memory = Some(n);
            }
            "max_age" => {
                let d = expect_duration(file, v, &p)?;
                if d.is_zero() {
                    return Err(err("max_age must not be zero"));
                }
                r.max_age = Some(d);
            }
            "jitter" => r.jitter = jitter(file, v, &p)?,
            other => return Err(unknown_key(file, other, k.pos, &p, RECYCLE_KEYS)),
        }
    }
    if r.max_requests.is_none() && r.max_memory.is_none() && r.max_age.is_none() {
        return Err(ConfigError::new(
            file,
            Some(node.pos),
            path,
            "recycle needs at least one of max_requests, max_memory, max_age",
        ));
    }
    Ok(r)
}

/// `jitter`: a percentage, `"10%"` (0 to 100), or `0`.
fn jitter(file: Option<&Path>, node: &Node, path: &str) -> Result<f64, ConfigError> {
    let pct = match &node.value {
        Value::Str(s) => s
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok()),
        _ => node.as_int().filter(|&i| i == 0).map(|_| 0.0),
    };
    match pct {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(type_error(
            file,
            node,
            path,
            "a percentage from 0% to 100%, e.g. \"10%\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2 g"), Ok(2 << 30));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("7b"), Ok(7));
        assert!(parse_size("1.5m").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
