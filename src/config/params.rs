//! Typed access to a route's parameters ([`Params`]) for handler factories: each read checks the
//! type and reports errors with the file, the value's line and column, and the key path
//! (`servers.s1.routes./sleep.duration`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Pos};
use super::tree::{self, Node, Value};
use super::values::{
    expect_bool, expect_duration, expect_path, expect_str, join, type_error, unknown_key,
};
use super::{Format, Params};

/// The keys every route may have besides its handler's own (read by the route table; `timeout`
/// and `max_request_body` are the guards of `super::guards`).
const ALWAYS_ALLOWED: &[&str] = &["methods", "strip_prefix", "timeout", "max_request_body"];

/// The type a route parameter must have, for [`Params::expect`] and
/// [`crate::Host::handler_with_params`]: what the reader of the same name accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// [`Params::str`].
    Str,
    /// [`Params::duration`].
    Duration,
    /// [`Params::path`].
    Path,
    /// [`Params::bool`].
    Bool,
    /// [`Params::u64`].
    U64,
    /// [`Params::str_list`].
    StrList,
}

impl Params {
    /// No parameters, no file, an empty key path, relative paths against `.`: for tests.
    pub fn empty() -> Params {
        Params {
            file: None,
            key_path: String::new(),
            pos: Pos::default(),
            base_dir: PathBuf::from("."),
            entries: Vec::new(),
        }
    }

    /// The parameters written in `text`, a YAML or TOML map such as `duration: 10s` (for tests of
    /// handler factories). The key path is `params`, the base directory `.`.
    pub fn parse(text: &str, format: Format) -> Result<Params, ConfigError> {
        let node = tree::parse(text, format)?;
        let entries = match node.value {
            Value::Map(entries) => entries,
            Value::Null => Vec::new(),
            _ => return Err(type_error(None, &node, "params", "a map")),
        };
        Ok(Params {
            key_path: "params".to_string(),
            pos: node.pos,
            entries: entries.into_iter().map(|(k, v)| (k.name, v)).collect(),
            ..Params::empty()
        })
    }

    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The keys, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The key path of `key`: `servers.s1.routes./sleep.duration`.
    pub fn key_path_of(&self, key: &str) -> String {
        join(&self.key_path, key)
    }

    /// `key` as a string; an error if it is something else.
    pub fn str(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        self.read(key, |file, node, path| expect_str(file, node, path))
    }

    /// `key` as a duration (`500ms`, `10s`, `1m30s`).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.read(key, expect_duration)
    }

    /// `key` as a path, resolved against the config file's directory when relative.
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        self.read(key, |file, node, path| {
            expect_path(file, &self.base_dir, node, path)
        })
    }

    /// `key` as a boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.read(key, expect_bool)
    }

    /// `key` as a non-negative integer.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.read(key, |file, node, path| {
            node.as_int()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| type_error(file, node, path, "a non-negative integer"))
        })
    }

    /// `key` as a list of strings; a single string is a list of one.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.read(key, |file, node, path| match &node.value {
            Value::Str(s) => Ok(vec![s.clone()]),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| expect_str(file, n, &format!("{path}[{i}]")).map(str::to_string))
                .collect(),
            _ => Err(type_error(
                file,
                node,
                path,
                "a string or a list of strings",
            )),
        })
    }

    /// An error about `key` (at its value, key path `ROUTE.key`), or about the whole route when
    /// `key` is `None` (or absent: "missing key" errors point at the route).
    pub fn error(&self, key: Option<&str>, msg: impl Into<String>) -> ConfigError {
        match key {
            Some(k) => {
                let pos = self.get(k).map_or(self.pos, |n| n.pos);
                ConfigError::new(self.file(), Some(pos), self.key_path_of(k), msg)
            }
            None => ConfigError::new(self.file(), Some(self.pos), self.key_path.clone(), msg),
        }
    }

    /// An error for the first key not in `allowed` (the route table's own keys, `methods` and
    /// `strip_prefix`, are always allowed), naming the nearest allowed key when one is close.
    pub fn deny_unknown(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        let mut valid: Vec<&str> = allowed.to_vec();
        for k in ALWAYS_ALLOWED {
            if !valid.contains(k) {
                valid.push(k);
            }
        }
        for (k, v) in &self.entries {
            if !valid.contains(&k.as_str()) {
                return Err(unknown_key(
                    self.file(),
                    k,
                    v.pos,
                    &self.key_path_of(k),
                    &valid,
                ));
            }
        }
        Ok(())
    }

    /// Check the parameters against the keys a handler reads: a key not declared is an error
    /// naming the nearest declared one (`unknown key "whoo" (did you mean "who"?)`), a value of
    /// the wrong type an error at its line and column, as the built-in handlers report them.
    pub fn expect(&self, keys: &[(&str, ParamType)]) -> Result<(), ConfigError> {
        let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        self.deny_unknown(&names)?;
        for (k, t) in keys {
            match t {
                ParamType::Str => self.str(k).map(drop)?,
                ParamType::Duration => self.duration(k).map(drop)?,
                ParamType::Path => self.path(k).map(drop)?,
                ParamType::Bool => self.bool(k).map(drop)?,
                ParamType::U64 => self.u64(k).map(drop)?,
                ParamType::StrList => self.str_list(k).map(drop)?,
            }
        }
        Ok(())
    }

    fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The config file, for errors made outside this module.
    pub(crate) fn file_path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn read<'s, T>(
        &'s self,
        key: &str,
        f: impl FnOnce(Option<&Path>, &'s Node, &str) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            Some(node) => f(self.file(), node, &self.key_path_of(key)).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_params_are_checked_like_the_builtins() {
        let keys = [("who", ParamType::Str), ("wait", ParamType::Duration)];
        let p = |text: &str| Params::parse(text, Format::Yaml).unwrap();
        p("who: Alice\nwait: 2s\nmethods: GET\n")
            .expect(&keys)
            .unwrap();
        p("").expect(&keys).unwrap();
        assert_eq!(
            p("whoo: Alice\n").expect(&keys).unwrap_err().to_string(),
            "<embedded default>:1:7: params.whoo: unknown key \"whoo\" (did you mean \"who\"?)"
        );
        assert_eq!(
            p("who: 42\n").expect(&keys).unwrap_err().to_string(),
            "<embedded default>:1:6: params.who: expected a string, found an integer 42"
        );
        assert!(
            p("wait: soon\n")
                .expect(&keys)
                .unwrap_err()
                .to_string()
                .contains("params.wait: invalid duration \"soon\""),
        );
    }
}
