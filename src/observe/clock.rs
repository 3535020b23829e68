//! The time of an access log line, cheaply: the wall clock is read at most once a second per
//! output ([`Anchor`]), and the date and time of day are formatted once per second
//! ([`TimeCache`]: as the opening of a JSON line, up to the client's value, and as the combined
//! format's date); a line adds only its milliseconds, which for a reading within the cached
//! second are one subtraction, one comparison and one division by a constant away.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::serve::exchange::mono_ns;

/// The wall-clock second last formatted, kept per output (under its sink's lock).
#[derive(Debug)]
pub(crate) struct TimeCache {
    anchor: Anchor,
    second: u64,
    /// The monotonic reading at which `second` began (as the anchor maps them): the readings
    /// `from..from + 1 s` fall in it. At first [`NONE_YET`], which no reading is within a second
    /// after.
    from: u64,
    /// The opening of a JSON line up to the client's value, with this second:
    /// `{"time":"2026-11-29T17:33:26.000Z","client":"` ([`JSON_HEAD_LEN`] bytes, padded), the
    /// `.000` at [`JSON_MS_AT`] for the line to overwrite with its milliseconds.
    pub(super) json_head: [u8; 48],
    /// `29/Nov/2026:17:33:26 +0000`.
    pub(super) clf: [u8; 26],
}

impl Default for TimeCache {
    fn default() -> TimeCache {
        TimeCache {
            anchor: Anchor::default(),
            second: 0,
            from: NONE_YET,
            json_head: [0; 48],
            clf: [0; 26],
        }
    }
}

impl TimeCache {
    /// Set the cache to the second `started` (a [`mono_ns`] reading) falls in (UTC); returns
    /// its milliseconds.
    #[inline]
    pub(super) fn start(&mut self, started: u64) -> u32 {
        // The usual case: within the second cached (before it, the difference wraps to a huge
        // number). The anchor is consulted again at most a second later.
        let d = started.wrapping_sub(self.from);
        if d < NS_PER_SEC {
            return (d / 1_000_000) as u32;
        }
        self.start_anew(started)
    }

    #[inline(never)]
    fn start_anew(&mut self, started: u64) -> u32 {
        let unix = self.anchor.wall_ns(started);
        let into = unix % NS_PER_SEC;
        self.set(unix / NS_PER_SEC);
        self.from = started.saturating_sub(into);
        (into / 1_000_000) as u32
    }

    fn set(&mut self, second: u64) {
        if self.second == second && self.json_head[0] != 0 {
            return;
        }
        self.second = second;
        let (y, mo, d) = civil_from_days((second / 86_400) as i64);
        let s = second % 86_400;
        let (h, mi, se) = (s / 3600, s / 60 % 60, s % 60);
        let mut iso = Vec::with_capacity(19);
        num_padded(&mut iso, y as u64, 4);
        iso.push(b'-');
        num_padded(&mut iso, mo as u64, 2);
        iso.push(b'-');
        num_padded(&mut iso, d as u64, 2);
        iso.push(b'T');
        let mut hms = Vec::with_capacity(8);
        num_padded(&mut hms, h, 2);
        hms.push(b':');
        num_padded(&mut hms, mi, 2);
        hms.push(b':');
        num_padded(&mut hms, se, 2);
        iso.extend_from_slice(&hms);
        let head = [&b"{\"time\":\""[..], &iso, b".000Z\",\"client\":\""].concat();
        self.json_head[..JSON_HEAD_LEN].copy_from_slice(&head);
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let mut clf = Vec::with_capacity(26);
        num_padded(&mut clf, d as u64, 2);
        clf.push(b'/');
        clf.extend_from_slice(MONTHS[(mo - 1) as usize]);
        clf.push(b'/');
        num_padded(&mut clf, y as u64, 4);
        clf.push(b':');
        clf.extend_from_slice(&hms);
        clf.extend_from_slice(b" +0000");
        self.clf.copy_from_slice(&clf);
    }
}

/// Wall-clock time from a [`mono_ns`] reading without a clock read per request: the wall
/// clock and the monotonic clock are read together at most once a second per output (the
/// anchor), and a reading's time is the anchor's plus its offset from the anchor's
/// monotonic reading (one subtraction and a comparison). A wall-clock step (NTP, an operator)
/// shows in the lines within two seconds (the anchor, and the second cached by [`TimeCache`], are
/// each used for at most one).
#[derive(Debug, Default)]
struct Anchor {
    /// The monotonic reading (0: none yet).
    at: u64,
    /// The wall-clock time read with it, in ns since the Unix epoch (a `u64` holds them until
    /// 2554, and divides by a constant without a library call).
    unix: u64,
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// [`TimeCache::from`] before the first reading: above every reading (2^63 ns is 292 years of
/// uptime), so the difference from it wraps to a huge number.
const NONE_YET: u64 = 1 << 63;

/// The length of [`TimeCache::json_head`]'s text.
pub(super) const JSON_HEAD_LEN: usize = 45;
/// Where the milliseconds' `.000` is in [`TimeCache::json_head`].
pub(super) const JSON_MS_AT: usize = 28;

/// How long an anchor is used, in ns.
const ANCHOR_FOR: u64 = NS_PER_SEC;

impl Anchor {
    /// Nanoseconds since the Unix epoch of the monotonic reading `t`.
    fn wall_ns(&mut self, t: u64) -> u64 {
        // The usual case: `t` within the anchor's second (before the anchor, the difference
        // wraps to a huge number).
        let d = t.wrapping_sub(self.at);
        if self.at != 0 && d < ANCHOR_FOR {
            return self.unix + d;
        }
        // `t` is before the anchor (a long request) or past its second: a new anchor, which
        // `t` precedes.
        let at = mono_ns();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        *self = Anchor { at, unix };
        unix.saturating_sub(at.saturating_sub(t))
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Append `n` in decimal, zero-padded to `width` digits.
fn num_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut m = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width);
    for &b in &buf[start..] {
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TimeCache {
        /// The date and time in the JSON head (checking its frame too).
        fn iso(&self) -> &[u8] {
            let h = &self.json_head[..JSON_HEAD_LEN];
            assert_eq!(&h[..9], b"{\"time\":\"");
            assert_eq!(&h[JSON_MS_AT..], b".000Z\",\"client\":\"");
            &h[9..JSON_MS_AT]
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let mut c = TimeCache::default();
        c.set(1_795_966_406);
        assert_eq!(c.iso(), b"2026-11-29T15:33:26");
        assert_eq!(&c.clf, b"29/Nov/2026:15:33:26 +0000");
    }

    #[test]
    fn time_rolls_over_at_a_second_boundary() {
        let mut c = TimeCache::default();
        c.set(1_795_966_406);
        c.set(1_795_966_407);
        assert_eq!(c.iso(), b"2026-11-29T15:33:27");
        // The last second of a year, then the first of the next.
        c.set(1_798_761_599);
        assert_eq!(c.iso(), b"2026-12-31T23:59:59");
        assert_eq!(&c.clf, b"31/Dec/2026:23:59:59 +0000");
        c.set(1_798_761_600);
        assert_eq!(c.iso(), b"2027-01-01T00:00:00");
        assert_eq!(&c.clf, b"01/Jan/2027:00:00:00 +0000");
    }

    #[test]
    fn a_readings_milliseconds_within_and_past_the_cached_second() {
        const MS: u64 = 1_000_000;
        // An anchor as if read at a monotonic T0, 250 ms into a known second (no clock is read
        // while the readings stay within its second).
        let t0 = 10_000 * NS_PER_SEC;
        let second = 1_795_966_406;
        let mut c = TimeCache {
            anchor: Anchor {
                at: t0,
                unix: second * NS_PER_SEC + 250 * MS,
            },
            ..TimeCache::default()
        };
        assert_eq!(c.start(t0), 250);
        assert_eq!((c.second, c.iso()), (second, &b"2026-11-29T15:33:26"[..]));
        // The same second: the milliseconds are the reading's offset from its start.
        assert_eq!(c.start(t0 + 749 * MS), 999);
        assert_eq!(c.start(t0 + 1), 250);
        // The next second, back to the first (a long request's start), and the next again.
        assert_eq!(c.start(t0 + 750 * MS), 0);
        assert_eq!(
            (c.second, c.iso()),
            (second + 1, &b"2026-11-29T15:33:27"[..])
        );
        assert_eq!(c.start(t0 + 10 * MS), 260);
        assert_eq!(c.second, second);
        assert_eq!(c.start(t0 + 999 * MS), 249);
        assert_eq!(c.second, second + 1);
    }

    #[test]
    fn the_anchor_gives_the_wall_clock_of_a_monotonic_reading() {
        const MS: u64 = 1_000_000;
        let unix = |ns: u64| i128::from(ns / MS);
        let mut a = Anchor::default();
        let now = mono_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i128;
        // Now, before now (a request that started earlier), and 900 ms later (within the
        // anchor's second): each within a few ms of the wall clock's reading.
        for (t, want) in [
            (now, wall),
            (now - 5_000 * MS, wall - 5_000),
            (now + 900 * MS, wall + 900),
            (now - 5 * MS, wall - 5),
        ] {
            let got = unix(a.wall_ns(t));
            assert!((got - want).abs() < 500, "{got} vs {want}");
        }
        // Past the anchor's second, a new anchor is read (it is later than the old one).
        let old = a.at;
        std::thread::sleep(std::time::Duration::from_millis(2));
        a.wall_ns(mono_ns() + 1_500 * MS);
        assert!(a.at > old);
    }
}
