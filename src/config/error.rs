//! Config errors: [`Pos`] (a line and column in the config file) and [`ConfigError`], the one
//! error type of the config module, which knows the file, the position, the key path and what is
//! wrong, and displays as `FILE:LINE:COL: KEYPATH: MESSAGE`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A position in a config file: 1-based line and column (columns count characters, not bytes).
///
/// `Pos::default()` (0, 0) means "unknown" and is not displayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    /// Line, starting at 1 (0: unknown).
    pub line: usize,
    /// Column in characters, starting at 1 (0: unknown).
    pub col: usize,
}

impl Pos {
    /// A position at `line`, `col` (both 1-based).
    pub const fn new(line: usize, col: usize) -> Pos {
        Pos { line, col }
    }

    /// Whether this position is known (not the default 0:0).
    pub const fn is_known(&self) -> bool {
        self.line != 0
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// An error in a configuration: where it is (file, line and column, key path) and what is wrong.
///
/// Displays as `FILE:LINE:COL: KEYPATH: MESSAGE`, leaving out the position when it is unknown and
/// the key path when it is empty (whole-file errors). The file is shown as given, or as
/// `<embedded default>` for the embedded default configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as given (`None`: the embedded default).
    pub file: Option<PathBuf>,
    /// Where in the file (the offending value, or the key for unknown keys), if known.
    pub pos: Option<Pos>,
    /// Dotted key path such as `servers.s1.routes./sleep.duration`; empty for whole-file errors.
    pub key_path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `pos` (if known) under `key_path` in `file` (`None`: the embedded default).
    pub fn new(
        file: Option<&Path>,
        pos: Option<Pos>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.map(Path::to_path_buf),
            pos: pos.filter(Pos::is_known),
            key_path: key_path.into(),
            message: message.into(),
        }
    }

    /// The config file at `path` cannot be read.
    pub fn io(path: impl AsRef<Path>, err: io::Error) -> ConfigError {
        ConfigError::new(
            Some(path.as_ref()),
            None,
            "",
            format!("cannot read the config file: {}", io_message(&err)),
        )
    }

    /// The config file (`None`: the embedded default).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The position, if known.
    pub fn pos(&self) -> Option<Pos> {
        self.pos
    }

    /// The key path (empty for whole-file errors).
    pub fn key_path(&self) -> &str {
        &self.key_path
    }

    /// The message alone, without file, position and key path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("<embedded default>")?,
        }
        if let Some(pos) = self.pos.filter(Pos::is_known) {
            write!(f, ":{pos}")?;
        }
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An I/O error's text without the ` (os error N)` suffix: `No such file or directory`.
pub(crate) fn io_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_all_parts() {
        let e = ConfigError::new(
            Some(Path::new("server.yaml")),
            Some(Pos::new(12, 20)),
            "servers.s1.routes./sleep.duration",
            "invalid duration \"abc\"",
        );
        assert_eq!(
            e.to_string(),
            "server.yaml:12:20: servers.s1.routes./sleep.duration: invalid duration \"abc\""
        );
    }

    #[test]
    fn display_omits_absent_parts() {
        let e = ConfigError::new(None, None, "", "boom");
        assert_eq!(e.to_string(), "<embedded default>: boom");
        let e = ConfigError::new(None, Some(Pos::default()), "graceful", "boom");
        assert_eq!(e.pos(), None);
        assert_eq!(e.to_string(), "<embedded default>: graceful: boom");
        let e = ConfigError::new(Some(Path::new("/a/b.toml")), Some(Pos::new(1, 2)), "", "x");
        assert_eq!(e.to_string(), "/a/b.toml:1:2: x");
    }

    #[test]
    fn io_error() {
        let err = io::Error::from_raw_os_error(2);
        let e = ConfigError::io("missing.yaml", err);
        assert_eq!(
            e.to_string(),
            "missing.yaml: cannot read the config file: No such file or directory"
        );
        assert_eq!(io_message(&io::Error::other("plain")), "plain");
    }
}
