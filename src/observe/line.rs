//! One access log line from one [`Exchange`], in either format.
//!
//! JSON, one object per line, fields in this order:
//! `{"time":"2026-11-29T17:33:26.123Z","client":"203.0.113.7","method":"GET","path":"/a?b=1",
//! "status":200,"bytes":1234,"duration_ms":0.153,"protocol":"HTTP/1.1","user_agent":"curl/8.5.0",
//! "request_id":"3f…-1a","generation":3}`. `time` is when the request's head arrived (UTC, ms);
//! `path` is the request target's path and query as received; `bytes` the response body bytes
//! sent; `duration_ms` from the head's arrival to the last byte written (µs precision);
//! `user_agent` and `request_id` are `null` when absent.
//!
//! Combined (Apache's and nginx's `combined`):
//! `203.0.113.7 - - [29/Nov/2026:17:33:26 +0000] "GET /a?b=1 HTTP/1.1" 200 1234 "-" "curl/8.5.0"`
//! (body bytes as nginx's `$body_bytes_sent`, `0` when none; `-` for an absent header).
//!
//! Every line is valid UTF-8 and at most [`MAX_LINE`] bytes, whatever a client sends: strings
//! are escaped (JSON: `\"`, `\\`, `\u00XX` for control bytes, and for every byte of a value that
//! is not UTF-8; combined: nginx's `\xXX` for `"`, `\` and bytes outside printable ASCII), and
//! the fields a client chooses are cut, marked with `...`, past a budget (path 2048 bytes, user
//! agent and referer 512 each, method 32). The bound is what lets several processes share a
//! pipe without their lines interleaving (see [`super::sink`]).

use http::Version;

use super::clock::TimeCache;
use crate::serve::exchange::Exchange;

/// The longest line (the budgets below and the fixed fields fit well within it); at most
/// `PIPE_BUF`, so one `write` of a line to a pipe is never split.
pub(crate) const MAX_LINE: usize = 4096;

const PATH_BUDGET: usize = 2048;
const HEADER_BUDGET: usize = 512;
const METHOD_BUDGET: usize = 32;

/// Append `n` in decimal (`itoa`: two digits per step from a table, no formatting machinery).
fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Append `n` (below 1000) as three digits: a fixed-size copy, which the compiler inlines.
fn three_digits(out: &mut Vec<u8>, n: u64) {
    let n = n % 1000;
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// The client's address as text: an IPv4 address (the usual case, and a v4-mapped IPv6 one) is
/// written from a table of the 256 octets, one copy per octet; other IPv6 addresses with the
/// standard formatter.
fn client(out: &mut Vec<u8>, ex: &Exchange) {
    let v4 = match ex.client.0 {
        std::net::SocketAddr::V4(a) => *a.ip(),
        std::net::SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => v4,
            None => {
                out.extend_from_slice(a.ip().to_string().as_bytes());
                return;
            }
        },
    };
    // Each octet's three table bytes are copied whole; only its length counts (so 16 bytes).
    let mut buf = [0u8; 16];
    let mut n = 0;
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let d = &OCTETS[usize::from(o)];
        buf[n..n + 3].copy_from_slice(&d[..3]);
        n += usize::from(d[3]);
    }
    out.extend_from_slice(&buf[..n]);
}

/// Each octet's decimal digits (left-aligned, padded with `0`) and their count.
static OCTETS: [[u8; 4]; 256] = octets();

const fn octets() -> [[u8; 4]; 256] {
    let mut t = [[b'0'; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        t[i] = if n >= 100 {
            [b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10, 3]
        } else if n >= 10 {
            [b'0' + n / 10, b'0' + n % 10, b'0', 2]
        } else {
            [b'0' + n, b'0', b'0', 1]
        };
        i += 1;
    }
    t
}

fn protocol(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_11 => b"HTTP/1.1",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/?",
    }
}

/// Append `v` as JSON string content, at most `budget` bytes of it (then `...`).
fn json_str(out: &mut Vec<u8>, v: &[u8], budget: usize) {
    // The usual value: printable ASCII with nothing to escape, within its budget: one copy.
    if v.len() <= budget && v.iter().all(|&b| PLAIN[usize::from(b)]) {
        out.extend_from_slice(v);
        return;
    }
    let limit = out.len() + budget;
    let utf8 = std::str::from_utf8(v).is_ok();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        // How many bytes of `v` this step consumes, and their escaped form's length.
        let (take, esc_len) = match b {
            b'"' | b'\\' => (1, 2),
            0..0x20 | 0x7f => (1, 6),
            0x80.. if !utf8 => (1, 6),
            0x80.. => (utf8_len(b), utf8_len(b)),
            _ => (1, 1),
        };
        if out.len() + esc_len > limit {
            out.extend_from_slice(b"...");
            return;
        }
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..0x20 | 0x7f => hex_escape(out, b"\\u00", b),
            0x80.. if !utf8 => hex_escape(out, b"\\u00", b),
            _ => out.extend_from_slice(&v[i..i + take]),
        }
        i += take;
    }
}

/// The bytes written as they are in both formats: printable ASCII but `"` and `\\` (one table
/// load per byte in the scan of a value).
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// The length of the UTF-8 sequence a (valid) leading byte starts.
fn utf8_len(b: u8) -> usize {
    match b {
        0xf0.. => 4,
        0xe0.. => 3,
        _ => 2,
    }
}

fn hex_escape(out: &mut Vec<u8>, prefix: &[u8], b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(prefix);
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 0xf) as usize]);
}

/// Append `v` as nginx writes a value in a quoted log field, at most `budget` bytes of it.
fn clf_str(out: &mut Vec<u8>, v: &[u8], budget: usize) {
    if v.len() <= budget && v.iter().all(|&b| PLAIN[usize::from(b)]) {
        out.extend_from_slice(v);
        return;
    }
    let limit = out.len() + budget;
    for &b in v {
        let plain = (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
        if out.len() + if plain { 1 } else { 4 } > limit {
            out.extend_from_slice(b"...");
            return;
        }
        if plain {
            out.push(b);
        } else {
            hex_escape(out, b"\\x", b);
        }
    }
}

/// A method is an HTTP token (`http` checks each byte of an extension method), so it holds
/// nothing to escape in either format: only its length is checked.
fn method(out: &mut Vec<u8>, m: &[u8]) {
    debug_assert!(m.iter().all(|&b| PLAIN[usize::from(b)]));
    if m.len() <= METHOD_BUDGET {
        out.extend_from_slice(m);
    } else {
        out.extend_from_slice(&m[..METHOD_BUDGET]);
        out.extend_from_slice(b"...");
    }
}

fn path_bytes(ex: &Exchange) -> &[u8] {
    match ex.uri.path_and_query() {
        Some(pq) => pq.as_str().as_bytes(),
        None => b"/",
    }
}

/// Append the JSON line for `ex` (with its newline).
pub(crate) fn json(out: &mut Vec<u8>, ex: &Exchange, generation: u64, cache: &mut TimeCache) {
    out.reserve(512);
    let ms = cache.start(ex.started);
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(&cache.iso);
    out.push(b'.');
    three_digits(out, u64::from(ms));
    out.extend_from_slice(b"Z\",\"client\":\"");
    client(out, ex);
    out.extend_from_slice(b"\",\"method\":\"");
    method(out, ex.method.as_str().as_bytes());
    out.extend_from_slice(b"\",\"path\":\"");
    json_str(out, path_bytes(ex), PATH_BUDGET);
    out.extend_from_slice(b"\",\"status\":");
    three_digits(out, u64::from(ex.status.as_u16()));
    out.extend_from_slice(b",\"bytes\":");
    num(out, ex.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    let us = ex.duration.as_micros().min(u128::from(u64::MAX)) as u64;
    num(out, us / 1000);
    out.push(b'.');
    three_digits(out, us % 1000);
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(ex.version));
    out.extend_from_slice(b"\",\"user_agent\":");
    json_opt(out, ex.user_agent.as_ref(), HEADER_BUDGET);
    out.extend_from_slice(b",\"request_id\":");
    match &ex.request_id {
        // Nothing to escape: a made id is hex and `-`, a given one passed
        // `request_id::acceptable` (at most 128 bytes of `A-Z a-z 0-9 - _ . : + / = @`).
        Some(id) => {
            debug_assert!(id.as_bytes().iter().all(|&b| PLAIN[usize::from(b)]));
            out.push(b'"');
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"generation\":");
    num(out, generation);
    out.extend_from_slice(b"}\n");
}

fn json_opt(out: &mut Vec<u8>, v: Option<&http::HeaderValue>, budget: usize) {
    match v {
        Some(v) => {
            out.push(b'"');
            json_str(out, v.as_bytes(), budget);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Append the combined-format line for `ex` (with its newline).
pub(crate) fn combined(out: &mut Vec<u8>, ex: &Exchange, cache: &mut TimeCache) {
    out.reserve(512);
    cache.start(ex.started);
    client(out, ex);
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(&cache.clf);
    out.extend_from_slice(b"] \"");
    method(out, ex.method.as_str().as_bytes());
    out.push(b' ');
    clf_str(out, path_bytes(ex), PATH_BUDGET);
    out.push(b' ');
    out.extend_from_slice(protocol(ex.version));
    out.extend_from_slice(b"\" ");
    num(out, u64::from(ex.status.as_u16()));
    out.push(b' ');
    num(out, ex.bytes);
    for h in [&ex.referer, &ex.user_agent] {
        out.extend_from_slice(b" \"");
        match h {
            Some(v) => clf_str(out, v.as_bytes(), HEADER_BUDGET),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use http::{HeaderValue, Method, StatusCode};

    use super::*;
    use crate::handler::ClientAddr;
    use crate::serve::exchange::{Outcome, RequestId};

    fn ex(uri: &str, ua: Option<HeaderValue>) -> Exchange {
        Exchange {
            started: Instant::now(),
            duration: Duration::from_micros(1_234_567),
            method: Method::GET,
            uri: uri.parse().unwrap(),
            version: Version::HTTP_11,
            client: ClientAddr("[::ffff:10.1.2.3]:5000".parse().unwrap()),
            status: StatusCode::NOT_FOUND,
            bytes: 19,
            outcome: Outcome::Written,
            request_id: Some(RequestId::Given(HeaderValue::from_static("abc-1"))),
            user_agent: ua,
            referer: None,
            tally: None,
        }
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let mut out = Vec::new();
        let ua = HeaderValue::from_bytes(b"bad \"agent\"\t \xff").unwrap();
        json(
            &mut out,
            &ex("/a?b=1", Some(ua)),
            7,
            &mut TimeCache::default(),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?b=1");
        assert_eq!(v["status"], 404);
        assert_eq!(v["bytes"], 19);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["user_agent"], "bad \"agent\"\t \u{ff}");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["generation"], 7);
        let t = v["time"].as_str().unwrap();
        assert_eq!((t.len(), &t[10..11], &t[23..]), (24, "T", "Z"), "{t}");
        let mut out = Vec::new();
        json(&mut out, &ex("/", None), 1, &mut TimeCache::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["user_agent"].is_null());
    }

    #[test]
    fn hostile_values_are_cut_to_a_bounded_line() {
        let long_path = format!("/{}", "%22".repeat(5000));
        let ua = HeaderValue::from_bytes(&[0xfe; 9000]).unwrap();
        let mut out = Vec::new();
        json(
            &mut out,
            &ex(&long_path, Some(ua.clone())),
            1,
            &mut TimeCache::default(),
        );
        assert!(out.len() <= MAX_LINE, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["path"].as_str().unwrap().ends_with("..."));
        let mut out = Vec::new();
        combined(
            &mut out,
            &ex(&long_path, Some(ua)),
            &mut TimeCache::default(),
        );
        assert!(out.len() <= MAX_LINE, "{}", out.len());
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn combined_line_shape() {
        let mut out = Vec::new();
        let mut e = ex("/x", Some(HeaderValue::from_static("curl/8")));
        e.uri = "/p?q=1".parse().unwrap();
        e.referer = Some(HeaderValue::from_static("http://a/\"b\""));
        combined(&mut out, &e, &mut TimeCache::default());
        let s = String::from_utf8(out).unwrap();
        let (head, rest) = s.split_once(" [").unwrap();
        assert_eq!(head, "10.1.2.3 - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /p?q=1 HTTP/1.1\" 404 19 \"http://a/\\x22b\\x22\" \"curl/8\"\n"
        );
    }

    #[test]
    fn client_addresses_from_the_octet_table() {
        for (addr, want) in [
            ("0.0.0.0:1", "0.0.0.0"),
            ("255.255.255.255:1", "255.255.255.255"),
            ("10.100.9.199:1", "10.100.9.199"),
            ("[::ffff:1.20.255.0]:1", "1.20.255.0"),
            ("[2001:db8::1]:1", "2001:db8::1"),
        ] {
            let mut e = ex("/", None);
            e.client = ClientAddr(addr.parse().unwrap());
            let mut out = Vec::new();
            client(&mut out, &e);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        for o in 0..=255u8 {
            let d = OCTETS[usize::from(o)];
            assert_eq!(&d[..usize::from(d[3])], o.to_string().as_bytes());
        }
    }

    #[test]
    fn json_escapes_and_cuts_at_character_boundaries() {
        let esc = |v: &[u8], budget| {
            let mut out = Vec::new();
            json_str(&mut out, v, budget);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(esc(b"a\"b\\c", 64), "a\\\"b\\\\c");
        assert_eq!(esc(b"\x00\x1f\x7f\n", 64), "\\u0000\\u001f\\u007f\\u000a");
        // Valid UTF-8 is kept; a value with an invalid byte has every high byte escaped.
        assert_eq!(esc("café".as_bytes(), 64), "café");
        assert_eq!(esc(b"caf\xc3\xa9\xff", 64), "caf\\u00c3\\u00a9\\u00ff");
        // A cut never splits a character or an escape.
        assert_eq!(esc("ab€".as_bytes(), 4), "ab...");
        assert_eq!(esc(b"ab\"", 3), "ab...");
        assert_eq!(esc(b"abc", 3), "abc");
        // A method is a token: copied, cut past its budget.
        let mut out = Vec::new();
        method(
            &mut out,
            Method::from_bytes(&[b'M'; 40]).unwrap().as_str().as_bytes(),
        );
        assert_eq!(out, [&[b'M'; 32][..], b"..."].concat());
        for v in [esc("ab€".as_bytes(), 4), esc(b"\x01\x01", 7)] {
            let line = format!("\"{v}\"");
            serde_json::from_str::<String>(&line).unwrap();
        }
    }
}
