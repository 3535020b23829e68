//! Humane durations in the config: [`parse_duration`] reads `500ms`, `10s`, `2m`, `1h`, `1m30s`,
//! `1.5s`; [`format_duration`] writes a [`Duration`] back in the shortest such form.
//!
//! A duration is one or more `NUMBER UNIT` parts with no spaces between them, where NUMBER is
//! decimal digits with an optional fraction and UNIT is `ms`, `s`, `m` or `h`. A bare number is
//! rejected: `10` could mean seconds or milliseconds.

use std::time::Duration;

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000_000_000;
const NANOS_PER_M: u128 = 60 * NANOS_PER_S;
const NANOS_PER_H: u128 = 60 * NANOS_PER_M;

/// Digits of a fraction beyond this are ignored (finer than a nanosecond for every unit).
const MAX_FRACTION_DIGITS: usize = 18;

/// The error message for a string that is not a duration.
fn invalid(text: &str) -> String {
    format!(
        "invalid duration {text:?} (expected a number and a unit: ms, s, m, h; e.g. 500ms, 10s, 2m)"
    )
}

/// Parse a humane duration such as `500ms`, `10s`, `2m`, `1h`, `1m30s` or `1.5s`.
///
/// Leading and trailing whitespace is ignored. The error is a message ready for a
/// [`super::ConfigError`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(invalid(text));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        // The number: digits, optionally a '.' and more digits (at least one digit in all).
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &s[int_start..i];
        let mut frac_part = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &s[frac_start..i];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid(text));
        }
        // The unit.
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[unit_start..i] {
            "ms" => NANOS_PER_MS,
            "s" => NANOS_PER_S,
            "m" => NANOS_PER_M,
            "h" => NANOS_PER_H,
            _ => return Err(invalid(text)),
        };
        let part = part_nanos(int_part, frac_part, unit).ok_or_else(|| too_long(text))?;
        total = total.checked_add(part).ok_or_else(|| too_long(text))?;
    }
    nanos_to_duration(total).ok_or_else(|| too_long(text))
}

fn too_long(text: &str) -> String {
    format!("duration {text:?} is too long")
}

/// `int.frac` units, in nanoseconds (the fraction is truncated to whole nanoseconds).
fn part_nanos(int_part: &str, frac_part: &str, unit: u128) -> Option<u128> {
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut nanos = int.checked_mul(unit)?;
    let frac_digits = &frac_part[..frac_part.len().min(MAX_FRACTION_DIGITS)];
    if !frac_digits.is_empty() {
        let frac: u128 = frac_digits.parse().ok()?;
        let scale = 10u128.pow(u32::try_from(frac_digits.len()).ok()?);
        nanos = nanos.checked_add(frac.checked_mul(unit)? / scale)?;
    }
    Some(nanos)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_S).ok()?;
    // The remainder is below 1e9, so it fits in a u32.
    let sub = u32::try_from(nanos % NANOS_PER_S).ok()?;
    Some(Duration::new(secs, sub))
}

/// Write a duration in the shortest form [`parse_duration`] reads back exactly: `500ms`, `10s`,
/// `1.5s`, `2m`, `90s`, `90m`, `1h`, `1h0.5s`. Forms are the compound one (`1h2m`) and
/// single-unit ones (`62m`, `3723s`, `1500ms`); on a tie the compound one wins. Zero is `0s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    // The canonical compound form first, so that it wins ties (`1h` rather than `60m`), then
    // single-unit forms: whole minutes, (decimal) seconds, (decimal) milliseconds.
    let mut candidates = Vec::with_capacity(4);
    if nanos >= NANOS_PER_S {
        candidates.push(compound(nanos));
    }
    if nanos.is_multiple_of(NANOS_PER_M) {
        candidates.push(format!("{}m", nanos / NANOS_PER_M));
    }
    if nanos >= NANOS_PER_S {
        candidates.push(with_fraction(nanos, NANOS_PER_S, 9, "s"));
    }
    candidates.push(with_fraction(nanos, NANOS_PER_MS, 6, "ms"));
    let mut best = String::new();
    for c in candidates {
        if best.is_empty() || c.len() < best.len() {
            best = c;
        }
    }
    best
}

/// `nanos / unit` as a decimal with up to `digits` fraction digits (trailing zeros dropped).
fn with_fraction(nanos: u128, unit: u128, digits: usize, suffix: &str) -> String {
    let whole = nanos / unit;
    let rest = nanos % unit;
    if rest == 0 {
        format!("{whole}{suffix}")
    } else {
        let frac = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", frac.trim_end_matches('0'))
    }
}

/// `XhYmZs`, leaving out zero parts; seconds may have a fraction.
fn compound(nanos: u128) -> String {
    let mut out = String::new();
    let hours = nanos / NANOS_PER_H;
    let mut rest = nanos % NANOS_PER_H;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    let minutes = rest / NANOS_PER_M;
    rest %= NANOS_PER_M;
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if rest > 0 {
        out.push_str(&with_fraction(rest, NANOS_PER_S, 9, "s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_forms() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10s "), Ok(ms(10_000)));
        assert_eq!(
            parse_duration("1.123456789123456789123s"),
            Ok(Duration::new(1, 123_456_789))
        );
    }

    #[test]
    fn rejects_bad_input() {
        let msg = |s: &str| {
            format!(
                "invalid duration {s:?} (expected a number and a unit: ms, s, m, h; e.g. 500ms, 10s, 2m)"
            )
        };
        for bad in [
            "", "abc", "10", "1.5", "s", "10 s", "-1s", "1d", "10S", "1.s.", "1m30", "ms", ".s",
            "1..5s", "1s ms",
        ] {
            assert_eq!(parse_duration(bad), Err(msg(bad)), "{bad:?}");
        }
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Err("duration \"99999999999999999999999h\" is too long".to_string())
        );
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(ms(500)), "500ms");
        assert_eq!(format_duration(ms(300)), "300ms");
        assert_eq!(format_duration(ms(1_500)), "1.5s");
        assert_eq!(format_duration(ms(10_000)), "10s");
        assert_eq!(format_duration(ms(60_000)), "1m");
        assert_eq!(format_duration(ms(90_000)), "90s");
        assert_eq!(format_duration(ms(3_600_000)), "1h");
        assert_eq!(format_duration(ms(5_400_000)), "90m");
        assert_eq!(format_duration(ms(3_723_000)), "3723s");
        assert_eq!(format_duration(ms(3_720_000)), "62m");
        assert_eq!(format_duration(ms(3_600_500)), "1h0.5s");
        assert_eq!(format_duration(ms(86_400_000)), "24h");
        assert_eq!(format_duration(ms(90_060_000)), "25h1m");
        assert_eq!(format_duration(Duration::from_micros(250)), "0.25ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "0.000001ms");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(1_000_000_001),
            ms(1),
            ms(999),
            ms(61_001),
            ms(3_599_999),
            ms(86_400_000),
            Duration::new(123_456, 789),
            Duration::MAX,
        ] {
            let text = format_duration(d);
            assert_eq!(parse_duration(&text), Ok(d), "{text}");
        }
    }
}
