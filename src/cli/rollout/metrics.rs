//! What the bake reads from a host's `/metrics`: the samples of
//! `apphost_http_requests_total{server, route, method, status}` in the Prometheus text format
//! (0.0.4, and OpenMetrics 1.0, whose sample lines are the same), and how many requests, and
//! how many of them answered 5xx, were counted between two scrapes.
//!
//! Only that one counter is read, so this is a small reader of sample lines rather than a
//! dependency: a line is `NAME{LABEL="VALUE",…} VALUE [TIMESTAMP]` (OpenMetrics may add
//! ` # {…} …`, an exemplar), label values escape `\\`, `\"` and `\n`, and `#` lines are
//! comments (`HELP`, `TYPE`, `EOF`). A line that names the counter and cannot be read is an
//! error, never skipped: a bake must not pass on numbers it misread.
//!
//! A delta is taken per series, as Prometheus' `increase()` does: a series that went down was
//! reset, and counts from zero; a series that appeared counts whole. apphost's counters are the
//! host's and do not reset at a restart, so that only matters for a host started anew.

use std::collections::BTreeMap;

/// The counter the bake reads.
pub(crate) const REQUESTS_TOTAL: &str = "apphost_http_requests_total";

/// A line of `/metrics` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub(crate) struct MetricsError {
    /// 1-based.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line (cut to 200 characters).
    pub text: String,
}

/// One series of the counter: its route and status labels, and its value.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    route: String,
    status: String,
    value: f64,
}

/// The counter's series in one scrape, keyed by their whole label set.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestCounts {
    series: BTreeMap<String, Series>,
}

/// Requests counted between two scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Tally {
    /// All requests.
    pub total: f64,
    /// Those answered 5xx.
    pub errors: f64,
}

impl Tally {
    /// The sum of two tallies.
    pub(crate) fn plus(self, o: Tally) -> Tally {
        Tally {
            total: self.total + o.total,
            errors: self.errors + o.errors,
        }
    }
}

impl RequestCounts {
    /// Read the counter's samples from a `/metrics` answer. A text without the counter gives
    /// no series (a host that has not answered a request yet may not show it).
    pub(crate) fn parse(text: &str) -> Result<RequestCounts, MetricsError> {
        let mut series = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line
                .find(|c: char| c == '{' || c.is_ascii_whitespace())
                .unwrap_or(line.len());
            if &line[..name_end] != REQUESTS_TOTAL {
                continue;
            }
            let err = |reason| MetricsError {
                line: i + 1,
                reason,
                text: line.chars().take(200).collect(),
            };
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..]).map_err(err)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let value_text = rest
                .split_ascii_whitespace()
                .next()
                .ok_or(err("no value"))?;
            let value: f64 = value_text
                .parse()
                .map_err(|_| err("the value is not a number"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(err("a counter must be a finite number, not negative"));
            }
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or_else(String::new, |(_, v)| v.clone())
            };
            let key = labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(",");
            let s = Series {
                route: get("route"),
                status: get("status"),
                value,
            };
            if series.insert(key, s).is_some() {
                return Err(err("the same series twice"));
            }
        }
        Ok(RequestCounts { series })
    }

    /// The requests counted from `base` to `self`, leaving out the series whose route
    /// `skip` says (the rollout's own requests: readiness checks, scrapes, admin calls).
    pub(crate) fn since(&self, base: &RequestCounts, skip: impl Fn(&str) -> bool) -> Tally {
        let mut t = Tally::default();
        for (key, s) in &self.series {
            if skip(&s.route) {
                continue;
            }
            let before = base.series.get(key).map_or(0.0, |b| b.value);
            // A counter that went down was reset: everything it shows now is new.
            let delta = if s.value >= before {
                s.value - before
            } else {
                s.value
            };
            t.total += delta;
            if s.status.starts_with('5') {
                t.errors += delta;
            }
        }
        t
    }
}

/// A sample's labels: name and value, in the order written.
type Labels = Vec<(String, String)>;

/// Labels after the `{` up to the matching `}`; returns them and the rest of the line.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((out, rest));
        }
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated labels")?;
        let name = &s[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("a label name is missing or invalid");
        }
        s = s[name_end..].trim_start();
        s = s.strip_prefix('=').ok_or("no `=` after a label name")?;
        s = s.trim_start();
        s = s.strip_prefix('"').ok_or("a label value is not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("a bad escape in a label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("no `,` or `}` after a label");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_1: &str = r#"# HELP apphost_http_requests_total HTTP requests answered, by route and status.
# TYPE apphost_http_requests_total counter
apphost_http_requests_total{server="web",route="/pid",method="GET",status="200"} 10
apphost_http_requests_total{server="web",route="/pid",method="GET",status="500"} 1
apphost_http_requests_total{server="web",route="/ready",method="GET",status="200"} 4
apphost_http_requests_total{server="web",route="/debug/admin/*action",method="GET",status="503"} 2
apphost_http_requests_total_other{status="500"} 99
# TYPE apphost_http_requests_in_flight gauge
apphost_http_requests_in_flight{server="web"} 1
"#;

    #[test]
    fn the_counter_is_read_and_other_families_ignored() {
        let c = RequestCounts::parse(SCRAPE_1).unwrap();
        assert_eq!(c.series.len(), 4);
        let all = c.since(&RequestCounts::default(), |_| false);
        assert_eq!(
            all,
            Tally {
                total: 17.0,
                errors: 3.0
            }
        );
    }

    #[test]
    fn a_delta_is_per_series_skips_the_tools_own_routes_and_survives_a_reset() {
        let base = RequestCounts::parse(SCRAPE_1).unwrap();
        let later = r#"apphost_http_requests_total{server="web",route="/pid",method="GET",status="200"} 30
apphost_http_requests_total{server="web",route="/pid",method="GET",status="500"} 6
apphost_http_requests_total{server="web",route="/ready",method="GET",status="200"} 40
apphost_http_requests_total{server="web",route="/debug/admin/*action",method="GET",status="503"} 9
apphost_http_requests_total{server="web",route="/new",method="POST",status="502"} 3
"#;
        let now = RequestCounts::parse(later).unwrap();
        let skip = |r: &str| r == "/ready" || r.starts_with("/debug/admin");
        assert_eq!(
            now.since(&base, skip),
            Tally {
                total: 20.0 + 5.0 + 3.0,
                errors: 5.0 + 3.0
            }
        );
        // The host was started anew: its counters began again from zero.
        let reset = RequestCounts::parse(
            "apphost_http_requests_total{server=\"web\",route=\"/pid\",method=\"GET\",status=\"200\"} 2\n",
        )
        .unwrap();
        assert_eq!(reset.since(&base, skip).total, 2.0);
    }

    #[test]
    fn openmetrics_escapes_timestamps_and_exemplars() {
        let text = "# TYPE apphost_http_requests counter\n\
            apphost_http_requests_total{route=\"/a\\\"b\\\\c\\nd\",status=\"503\" , server=\"s\",} 2.0 1700000000.123 # {trace_id=\"x\"} 1.0\n\
            apphost_http_requests_created{route=\"/a\",status=\"503\"} 1700000000\n\
            apphost_http_requests_total 5\n\
            # EOF\n";
        let c = RequestCounts::parse(text).unwrap();
        let route_labels: Vec<&str> = c.series.values().map(|s| s.route.as_str()).collect();
        assert!(route_labels.contains(&"/a\"b\\c\nd"), "{route_labels:?}");
        assert_eq!(
            c.since(&RequestCounts::default(), |_| false),
            Tally {
                total: 7.0,
                errors: 2.0
            }
        );
        assert_eq!(RequestCounts::parse("").unwrap(), RequestCounts::default());
    }

    #[test]
    fn a_line_of_the_counter_that_cannot_be_read_is_an_error() {
        for (text, why) in [
            ("apphost_http_requests_total{status=\"500\"}", "no value"),
            (
                "apphost_http_requests_total{status=\"500\"} many",
                "not a number",
            ),
            ("apphost_http_requests_total{status=500} 1", "not quoted"),
            (
                "apphost_http_requests_total{status=\"500} 1",
                "unterminated",
            ),
            ("apphost_http_requests_total{status=\"5\\x\"} 1", "escape"),
            (
                "apphost_http_requests_total{status=\"5\" route=\"/\"} 1",
                "`,` or `}`",
            ),
            ("apphost_http_requests_total{=\"5\"} 1", "label name"),
            ("apphost_http_requests_total{status=\"5\"} -1", "negative"),
            ("apphost_http_requests_total{status=\"5\"} NaN", "finite"),
            (
                "apphost_http_requests_total{status=\"5\"} 1\napphost_http_requests_total{status=\"5\"} 2",
                "twice",
            ),
        ] {
            let e = RequestCounts::parse(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
    }
}
