//! The deadlines the [watchdog](super)'s sweeper enforces, and how often it wakes to check them.

use std::time::Duration;

/// The longest sweeper tick.
pub(super) const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest sweeper tick.
pub(super) const MIN_TICK: Duration = Duration::from_millis(5);

/// The deadlines the sweeper enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From accept to the first request head (TLS handshake included).
    pub header_read_timeout: Duration,
    /// HTTP/1: from the end of a response to the next request head.
    pub idle_timeout: Duration,
    /// Draining: how long an idle HTTP/1 connection is kept.
    pub keepalive_grace: Duration,
    /// How long a response may wait on its client (no write progress) before the connection is
    /// cut.
    pub send_timeout: Duration,
    /// Draining: how long upgraded connections are left to the application before the host
    /// closes them (see [`crate::serve::upgrade`]); `None`: until `shutdown_timeout`.
    pub stream_grace: Option<Duration>,
    /// The shortest route `timeout`, if any route has one (see [`crate::serve::guarded`]).
    pub route_timeout: Option<Duration>,
}

impl Limits {
    /// Every timeout `d`, no stream grace, no route timeout: for serving code run outside a
    /// configured server (the standby's warm-up request, tests).
    pub(crate) fn all(d: Duration) -> Limits {
        Limits {
            header_read_timeout: d,
            idle_timeout: d,
            keepalive_grace: d,
            send_timeout: d,
            stream_grace: None,
            route_timeout: None,
        }
    }

    /// The sweeper's period while serving: an eighth of the shortest timeout, within bounds.
    pub(super) fn tick(&self) -> Duration {
        let shortest = self
            .header_read_timeout
            .min(self.idle_timeout)
            .min(self.send_timeout)
            .min(self.route_timeout.unwrap_or(Duration::MAX));
        (shortest / 8).clamp(MIN_TICK, MAX_TICK)
    }

    /// The sweeper's period while draining.
    pub(super) fn drain_tick(&self) -> Duration {
        let shortest = self
            .stream_grace
            .map_or(self.keepalive_grace, |g| g.min(self.keepalive_grace));
        self.tick().min((shortest / 8).max(MIN_TICK))
    }
}
