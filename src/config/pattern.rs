//! A route pattern as written in the config, checked once, here: an exact path (`/pid`) or a
//! wildcard, a prefix followed by a final `/*name` segment (`/files/*path`, or `/*name` for
//! everything). The config reader, the route table and the admin routes all use this one value,
//! so a pattern means the same thing everywhere.

use std::fmt;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    /// It does not start with `/`.
    #[error("route {0:?} must start with \"/\"")]
    NoLeadingSlash(String),
    /// A `*` somewhere else than at the start of a named last segment.
    #[error(
        "route {0:?}: \"*\" is only allowed as the last segment, as /prefix/*name (e.g. /files/*path)"
    )]
    MisplacedStar(String),
    /// Whitespace in it.
    #[error("route {0:?} must not contain spaces")]
    Space(String),
}

/// A checked route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePattern {
    text: String,
    /// For a wildcard, where its `/*` starts.
    star: Option<usize>,
}

impl RoutePattern {
    /// Check `text`: it starts with `/`, has no whitespace, and a `*` only starts a final,
    /// named segment.
    pub(crate) fn parse(text: &str) -> Result<RoutePattern, PatternError> {
        if !text.starts_with('/') {
            return Err(PatternError::NoLeadingSlash(text.into()));
        }
        let star = match text.find('*') {
            None => None,
            Some(i) => {
                let name = &text[i + 1..];
                if !text[..i].ends_with('/') || name.is_empty() || name.contains(['*', '/']) {
                    return Err(PatternError::MisplacedStar(text.into()));
                }
                Some(i - 1)
            }
        };
        if text.chars().any(char::is_whitespace) {
            return Err(PatternError::Space(text.into()));
        }
        Ok(RoutePattern {
            text: text.into(),
            star,
        })
    }

    /// An exact path taken as it is (`admin.path`, which the config checks by its own rule).
    pub(crate) fn exact(path: &str) -> RoutePattern {
        RoutePattern {
            text: path.into(),
            star: None,
        }
    }

    /// The wildcard `{prefix}/*{name}`.
    pub(crate) fn wildcard(prefix: &str, name: &str) -> RoutePattern {
        RoutePattern {
            text: format!("{prefix}/*{name}"),
            star: Some(prefix.len()),
        }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// For a wildcard, its prefix (the pattern without `/*name`; `""` for `/*name`).
    pub(crate) fn wildcard_prefix(&self) -> Option<&str> {
        self.star.map(|i| &self.text[..i])
    }

    /// What a route table keys it by: the path of an exact pattern, the prefix of a wildcard.
    pub(crate) fn key(&self) -> &str {
        self.wildcard_prefix().unwrap_or(&self.text)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let p = RoutePattern::parse("/pid").unwrap();
        assert_eq!(
            (p.as_str(), p.wildcard_prefix(), p.key()),
            ("/pid", None, "/pid")
        );
        let p = RoutePattern::parse("/files/*path").unwrap();
        assert_eq!(p.wildcard_prefix(), Some("/files"));
        assert_eq!(p.key(), "/files");
        let p = RoutePattern::parse("/*rest").unwrap();
        assert_eq!(p.wildcard_prefix(), Some(""));
        assert_eq!(RoutePattern::parse("/").unwrap().key(), "/");
    }

    /// The rules the route table used to check again (its messages kept).
    #[test]
    fn bad_patterns() {
        for (pattern, msg) in [
            ("x", "must start with \"/\""),
            ("/a*/b", "only allowed as the last segment"),
            ("/a/*b*", "only allowed as the last segment"),
            ("/a/*", "only allowed as the last segment"),
            ("/*", "only allowed as the last segment"),
            ("/a/*b/c", "only allowed as the last segment"),
            ("/a b", "must not contain spaces"),
        ] {
            let err = RoutePattern::parse(pattern).unwrap_err();
            assert!(err.to_string().contains(msg), "{pattern:?}: {err}");
        }
    }
}
