//! Logging with `tracing`: text (default) or JSON lines on stderr, each carrying the process id
//! in the seed's wording (`pid[1234]: http server started listening on [:8199]`).
//!
//! Text: `2026-11-24T13:55:03.123456Z  INFO pid[1234]: message key=value`.
//! JSON: `{"time":"…","level":"INFO","pid":1234,"msg":"message","key":"value"}`.
//!
//! A line logged inside a span carries the span's fields after its own: a handler's lines carry
//! their request's id (`… message key=value request_id=3f…-1a`; in JSON a `"request_id"` key),
//! from the `request` span serving gives each request when its server has an access log.
//!
//! The level comes from `log.level` in the config; `APPHOST_LOG` (a tracing filter such as
//! `apphost=debug`, checked like `log.level`; an invalid one is ignored with a warning)
//! overrides it. Errors are printed whatever the level. Worker processes write to a pipe the supervisor reads, so their
//! lines appear on the supervisor's stderr (and the last ones are kept to explain a failure).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. Calling it again does nothing. Returns a warning about
/// `APPHOST_LOG` for the supervisor to print (once, not again in every worker).
///
/// Errors always get through, whatever the level says (`off`, `apphost=warn` for another
/// target, a typo in `APPHOST_LOG`): the reason a host exits, such as an address in use, must
/// reach stderr.
pub(crate) fn init(cfg: &LogConfig) -> Option<String> {
    Ahead::build(cfg).install()
}

/// A subscriber built but not yet installed: a warm standby builds it from the config it parsed
/// ahead (the filter's parse and the registration of the callsites seen so far are then off the
/// handoff's path) and installs it at its activation when the config's `log` section is still
/// the one it was built from ([`Ahead::install_for`]).
pub(crate) struct Ahead {
    cfg: LogConfig,
    dispatch: tracing::Dispatch,
    warning: Option<String>,
}

impl Ahead {
    /// The subscriber `cfg` (and `APPHOST_LOG`) ask for.
    pub(crate) fn build(cfg: &LogConfig) -> Ahead {
        use tracing_subscriber::Layer;
        use tracing_subscriber::filter::{FilterExt, LevelFilter};
        use tracing_subscriber::layer::SubscriberExt;
        let env = std::env::var("APPHOST_LOG").ok();
        let (level, warning) = level_in_force(env.as_deref(), cfg);
        let filter = EnvFilter::try_new(level)
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .or(LevelFilter::ERROR);
        let pid = std::process::id();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // A log line that cannot be written is dropped. By default tracing-subscriber reports
            // it with `eprint!`, which panics when stderr is a pipe nobody reads: a worker whose
            // supervisor was killed would then die at its next log line instead of draining.
            .log_internal_errors(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let layer = match cfg.format {
            LogFormat::Text => layer.event_format(TextFormat { pid }).boxed(),
            LogFormat::Json => layer.event_format(JsonFormat { pid }).boxed(),
        };
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
        Ahead {
            cfg: cfg.clone(),
            dispatch: tracing::Dispatch::new(subscriber),
            warning,
        }
    }

    /// Install it as the global subscriber (nothing when one is installed already); the warning
    /// about `APPHOST_LOG`, if any.
    pub(crate) fn install(self) -> Option<String> {
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = self.dispatch.try_init();
        self.warning
    }

    /// Install it if it was built from `cfg`, else the subscriber `cfg` asks for.
    pub(crate) fn install_for(self, cfg: &LogConfig) -> Option<String> {
        if self.cfg == *cfg {
            self.install()
        } else {
            init(cfg)
        }
    }
}

/// The filter to use: `APPHOST_LOG` when set and valid (the same rules as `log.level`), else the
/// config's level; an invalid `APPHOST_LOG` is ignored with a warning rather than taken for a
/// target name that silences every line.
fn level_in_force<'a>(env: Option<&'a str>, cfg: &'a LogConfig) -> (&'a str, Option<String>) {
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => match crate::config::log_level(v) {
            Ok(()) => (v, None),
            Err(why) => (
                &cfg.level,
                Some(format!(
                    "APPHOST_LOG ignored: {why}; using log.level {:?}",
                    cfg.level
                )),
            ),
        },
        None => (&cfg.level, None),
    }
}

struct TextFormat {
    pid: u32,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut w)?;
        write!(w, " {:>5} pid[{}]: ", event.metadata().level(), self.pid)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        for (_, fields) in span_fields::<S, N>(ctx) {
            write!(w, " {fields}")?;
        }
        writeln!(w)
    }
}

/// The formatted fields (`key=value key2=value2`) of each span the event is in, root first.
fn span_fields<S, N>(ctx: &FmtContext<'_, S, N>) -> Vec<(&'static str, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let Some(scope) = ctx.event_scope() else {
        return Vec::new();
    };
    scope
        .from_root()
        .filter_map(|span| {
            let ext = span.extensions();
            let f = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>()?;
            (!f.fields.is_empty()).then(|| (span.name(), f.fields.clone()))
        })
        .collect()
}

struct JsonFormat {
    pid: u32,
}

struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, v.into());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.put(f, format!("{v:?}").into());
    }
}

impl JsonVisitor {
    fn put(&mut self, f: &Field, v: serde_json::Value) {
        let name = if f.name() == "message" {
            "msg"
        } else {
            f.name()
        };
        self.0.insert(name.to_string(), v);
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut v = JsonVisitor(serde_json::Map::new());
        v.0.insert("time".into(), time.into());
        v.0.insert("level".into(), event.metadata().level().as_str().into());
        v.0.insert("pid".into(), self.pid.into());
        event.record(&mut v);
        // Span fields as formatted (`key=value`, space-separated: the request id's characters
        // never include a space or a quote), each a string; the event's own fields win.
        for (_, fields) in span_fields::<S, N>(ctx) {
            for (k, val) in fields.split(' ').filter_map(|kv| kv.split_once('=')) {
                v.0.entry(k.to_string())
                    .or_insert_with(|| val.trim_matches('"').into());
            }
        }
        let line = serde_json::to_string(&v.0).map_err(|_| fmt::Error)?;
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apphost_log_overrides_only_when_it_is_a_valid_level() {
        let cfg = LogConfig {
            format: LogFormat::Text,
            level: "warn".into(),
        };
        assert_eq!(level_in_force(None, &cfg), ("warn", None));
        assert_eq!(level_in_force(Some(" "), &cfg), ("warn", None));
        assert_eq!(
            level_in_force(Some("apphost=debug"), &cfg),
            ("apphost=debug", None)
        );
        let (level, warning) = level_in_force(Some("verbose"), &cfg);
        assert_eq!(level, "warn");
        let warning = warning.unwrap();
        assert!(
            warning.starts_with("APPHOST_LOG ignored: unknown log level \"verbose\""),
            "{warning}"
        );
    }
}
