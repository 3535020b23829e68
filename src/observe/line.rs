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
//!
//! A line is written straight into its sink's buffer, [`MAX_LINE`] bytes of it ([`Buf`]): the
//! budgets keep every line well within it (about 3,000 bytes at most), so each write is a bounds
//! check and a copy, and the fixed parts, whose lengths are constants, are copied without a
//! library call. So are the short fields of a few lengths (a standard method, the protocol, a
//! made request id, the generation's tail): copied at a fixed size, padding included, which what
//! follows overwrites. The client's address is formatted once for a run of lines from one client
//! ([`Cache`]).

use http::Version;

use super::clock::TimeCache;
use crate::serve::exchange::Exchange;

/// The longest line (the budgets below and the fixed fields fit well within it); at most
/// `PIPE_BUF`, so one `write` of a line to a pipe is never split.
pub(crate) const MAX_LINE: usize = 4096;

const PATH_BUDGET: usize = 2048;
const HEADER_BUDGET: usize = 512;
const METHOD_BUDGET: usize = 32;

/// A buffer a line is written into: [`MAX_LINE`] bytes, whatever they held before (the sink's
/// own buffer, so a line is formatted where it is queued: see [`super::sink::Sink::append_with`]).
pub(crate) type Buf = [u8; MAX_LINE];

/// What formatting keeps from one line to the next of an output (under its sink's lock): the
/// second last formatted and the client's address last written.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    time: TimeCache,
    client: ClientText,
}

/// The text of the client address last written, so the next line from the same client (every
/// request of a keep-alive connection, or of a proxy) is one comparison and one fixed-size copy.
#[derive(Debug)]
struct ClientText {
    /// The address (an IPv4-mapped IPv6 one as IPv4); `None`: nothing cached.
    ip: Option<std::net::IpAddr>,
    /// Its text, padded; `len` bytes of it count.
    text: [u8; CLIENT_MAX],
    len: usize,
}

impl Default for ClientText {
    fn default() -> ClientText {
        ClientText {
            ip: None,
            text: [0; CLIENT_MAX],
            len: 0,
        }
    }
}

/// Room for any address's text (IPv6 at its longest is 45 bytes).
const CLIENT_MAX: usize = 48;

/// Writes into a [`Buf`]. A local value whose methods are inlined, so its position stays in a
/// register while a line is written. Writing past the end panics; the field budgets make that
/// impossible (see the module doc): every line, and the fixed-size copies that may write padding
/// past its end (see [`Cur::put_padded`]), stay well within it.
struct Cur<'a> {
    b: &'a mut Buf,
    n: usize,
}

impl Cur<'_> {
    /// Append `s` (a constant `s` is copied by a few moves).
    #[inline(always)]
    fn put(&mut self, s: &[u8]) {
        let end = self.n + s.len();
        self.b[self.n..end].copy_from_slice(s);
        self.n = end;
    }

    /// Append the first `len` bytes of `s`, copying all of `s` (a fixed size: a few moves, no
    /// library call): the bytes past `len` are padding, overwritten by what follows.
    #[inline(always)]
    fn put_padded<const N: usize>(&mut self, s: &[u8; N], len: usize) {
        self.b[self.n..self.n + N].copy_from_slice(s);
        self.n += len.min(N);
    }

    #[inline(always)]
    fn push(&mut self, b: u8) {
        self.b[self.n] = b;
        self.n += 1;
    }
}

/// Append `n` in decimal: one or two digits directly (the usual body sizes and durations in
/// ms), more with `itoa`.
#[inline(always)]
fn num(out: &mut Cur<'_>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
    } else if n < 100 {
        out.put(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    } else {
        num_long(out, n);
    }
}

fn num_long(out: &mut Cur<'_>, n: u64) {
    out.put(itoa::Buffer::new().format(n).as_bytes());
}

/// Append `n` (below 1000; above, its last three digits) as three digits, from a table.
#[inline(always)]
fn three_digits(out: &mut Cur<'_>, n: u64) {
    out.put(&DIGITS3[(n % 1000) as usize]);
}

/// `000` to `999`.
static DIGITS3: [[u8; 3]; 1000] = {
    let mut t = [[0; 3]; 1000];
    let mut i = 0;
    while i < 1000 {
        t[i] = [
            b'0' + (i / 100) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        i += 1;
    }
    t
};

/// The client's address as text: the cached text when it is the client of the line before
/// (see [`ClientText`]), else formatted and cached.
#[inline(always)]
fn client(out: &mut Cur<'_>, ex: &Exchange, cache: &mut ClientText) {
    let ip = match ex.client.0 {
        std::net::SocketAddr::V4(a) => std::net::IpAddr::V4(*a.ip()),
        std::net::SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(*a.ip()),
        },
    };
    if cache.ip != Some(ip) {
        client_anew(cache, ip);
    }
    out.put_padded(&cache.text, cache.len);
}

/// Format `ip` into `cache`: an IPv4 address (the usual case, and a v4-mapped IPv6 one) from a
/// table of the 256 octets, one 4-byte copy per octet; other IPv6 addresses with the standard
/// formatter.
#[inline(never)]
fn client_anew(cache: &mut ClientText, ip: std::net::IpAddr) {
    let mut text = [0; CLIENT_MAX];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            // Each octet's table entry is copied whole (its 4th byte is overwritten by what
            // follows, or lies past the end); only its length counts.
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                let e = &OCTETS[usize::from(o)];
                text[n..n + 3].copy_from_slice(&e[..3]);
                n += usize::from(e[3]);
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.to_string();
            let len = s.len().min(CLIENT_MAX);
            text[..len].copy_from_slice(&s.as_bytes()[..len]);
            len
        }
    };
    *cache = ClientText {
        ip: Some(ip),
        text,
        len,
    };
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

/// The version as text, padded to 8 bytes, and its length (for [`Cur::put_padded`]).
fn protocol(v: Version) -> (&'static [u8; 8], usize) {
    match v {
        Version::HTTP_09 => (b"HTTP/0.9", 8),
        Version::HTTP_10 => (b"HTTP/1.0", 8),
        Version::HTTP_11 => (b"HTTP/1.1", 8),
        Version::HTTP_2 => (b"HTTP/2.0", 8),
        Version::HTTP_3 => (b"HTTP/3.0", 8),
        _ => (b"HTTP/?  ", 6),
    }
}

/// Append `v` as JSON string content, at most `budget` bytes of it (then `...`).
#[inline(always)]
fn json_str(out: &mut Cur<'_>, v: &[u8], budget: usize) {
    // The usual value: printable ASCII with nothing to escape, within its budget: one copy.
    if v.len() <= budget && all_plain(v) {
        out.put(v);
    } else {
        json_escaped(out, v, budget);
    }
}

/// [`json_str`] of a value with something to escape, or too long.
fn json_escaped(out: &mut Cur<'_>, v: &[u8], budget: usize) {
    let limit = out.n + budget;
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
        if out.n + esc_len > limit {
            out.put(b"...");
            return;
        }
        match b {
            b'"' | b'\\' => out.put(&[b'\\', b]),
            0..0x20 | 0x7f => hex_escape(out, b"\\u00", b),
            0x80.. if !utf8 => hex_escape(out, b"\\u00", b),
            _ => out.put(&v[i..i + take]),
        }
        i += take;
    }
}

/// Whether every byte of `v` is written as it is in both formats (see [`PLAIN`]). Without an
/// early exit, so the scan of a long value (a user agent) runs 16 bytes a step.
#[inline(always)]
fn all_plain(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
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

fn hex_escape(out: &mut Cur<'_>, prefix: &[u8], b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put(prefix);
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 0xf) as usize]);
}

/// Append `v` as nginx writes a value in a quoted log field, at most `budget` bytes of it.
fn clf_str(out: &mut Cur<'_>, v: &[u8], budget: usize) {
    if v.len() <= budget && all_plain(v) {
        out.put(v);
        return;
    }
    let limit = out.n + budget;
    for &b in v {
        let plain = PLAIN[usize::from(b)];
        if out.n + if plain { 1 } else { 4 } > limit {
            out.put(b"...");
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
/// The standard methods are copied padded to 8 bytes, with no library call.
#[inline(always)]
fn method(out: &mut Cur<'_>, m: &http::Method) {
    let padded: (&[u8; 8], usize) = match *m {
        http::Method::GET => (b"GET     ", 3),
        http::Method::HEAD => (b"HEAD    ", 4),
        http::Method::POST => (b"POST    ", 4),
        http::Method::PUT => (b"PUT     ", 3),
        http::Method::DELETE => (b"DELETE  ", 6),
        http::Method::PATCH => (b"PATCH   ", 5),
        http::Method::OPTIONS => (b"OPTIONS ", 7),
        _ => return method_other(out, m.as_str().as_bytes()),
    };
    out.put_padded(padded.0, padded.1);
}

fn method_other(out: &mut Cur<'_>, m: &[u8]) {
    debug_assert!(m.iter().all(|&b| PLAIN[usize::from(b)]));
    if m.len() <= METHOD_BUDGET {
        out.put(m);
    } else {
        out.put(&m[..METHOD_BUDGET]);
        out.put(b"...");
    }
}

fn path_bytes(ex: &Exchange) -> &[u8] {
    match &ex.path {
        Some(pq) => pq.as_str().as_bytes(),
        None => b"/",
    }
}

/// The end of a JSON line for one generation: `,"generation":N}` and the newline (made once per
/// access log: it never changes), padded for [`Cur::put_padded`].
#[derive(Debug)]
pub(crate) struct Tail {
    bytes: [u8; TAIL_MAX],
    len: usize,
}

/// Room for the longest tail (a 20-digit generation: 36 bytes).
const TAIL_MAX: usize = 40;

/// The tail of the JSON lines of generation `generation`.
pub(crate) fn json_tail(generation: u64) -> Tail {
    let s = format!(",\"generation\":{generation}}}\n");
    let mut bytes = [b' '; TAIL_MAX];
    let len = s.len().min(TAIL_MAX);
    bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
    Tail { bytes, len }
}

/// Write the JSON line for `ex` (with its newline) at the start of `buf`; returns its length.
/// `tail` is [`json_tail`]'s, `cache` its output's.
pub(crate) fn json(buf: &mut Buf, ex: &Exchange, tail: &Tail, cache: &mut Cache) -> usize {
    let out = &mut Cur { b: buf, n: 0 };
    let Cache {
        time: cache,
        client: client_text,
    } = cache;
    let ms = cache.start(ex.started);
    out.put(b"{\"time\":\"");
    out.put(&cache.iso);
    out.push(b'.');
    three_digits(out, u64::from(ms));
    out.put(b"Z\",\"client\":\"");
    client(out, ex, client_text);
    out.put(b"\",\"method\":\"");
    method(out, &ex.method);
    out.put(b"\",\"path\":\"");
    json_str(out, path_bytes(ex), PATH_BUDGET);
    out.put(b"\",\"status\":");
    three_digits(out, u64::from(ex.status.as_u16()));
    out.put(b",\"bytes\":");
    num(out, ex.bytes);
    out.put(b",\"duration_ms\":");
    let us = ex.duration_ns / 1000;
    num(out, us / 1000);
    out.push(b'.');
    three_digits(out, us % 1000);
    out.put(b",\"protocol\":\"");
    let (p, len) = protocol(ex.version);
    out.put_padded(p, len);
    out.put(b"\",\"user_agent\":");
    match &ex.user_agent {
        Some(v) => {
            out.push(b'"');
            json_str(out, v.as_bytes(), HEADER_BUDGET);
            out.push(b'"');
        }
        None => out.put(b"null"),
    }
    out.put(b",\"request_id\":");
    match &ex.request_id {
        // Nothing to escape: a made id is hex and `-`, a given one passed
        // `request_id::acceptable` (at most 128 bytes of `A-Z a-z 0-9 - _ . : + / = @`).
        Some(id) => {
            debug_assert!(id.as_bytes().iter().all(|&b| PLAIN[usize::from(b)]));
            out.push(b'"');
            // A made id's length is fixed: a copy of a fixed size.
            match <&[u8; MADE_ID_LEN]>::try_from(id.as_bytes()) {
                Ok(made) => out.put(made),
                Err(_) => out.put(id.as_bytes()),
            }
            out.push(b'"');
        }
        None => out.put(b"null"),
    }
    out.put_padded(&tail.bytes, tail.len);
    out.n
}

/// The length of a made request id (see [`super::request_id`]).
const MADE_ID_LEN: usize = crate::sys::ID_LEN;

/// Write the combined-format line for `ex` (with its newline) at the start of `buf`; returns
/// its length.
pub(crate) fn combined(buf: &mut Buf, ex: &Exchange, cache: &mut Cache) -> usize {
    let out = &mut Cur { b: buf, n: 0 };
    cache.time.start(ex.started);
    client(out, ex, &mut cache.client);
    out.put(b" - - [");
    out.put(&cache.time.clf);
    out.put(b"] \"");
    method(out, &ex.method);
    out.push(b' ');
    clf_str(out, path_bytes(ex), PATH_BUDGET);
    out.push(b' ');
    let (p, len) = protocol(ex.version);
    out.put_padded(p, len);
    out.put(b"\" ");
    num(out, u64::from(ex.status.as_u16()));
    out.push(b' ');
    num(out, ex.bytes);
    for h in [&ex.referer, &ex.user_agent] {
        out.put(b" \"");
        match h {
            Some(v) => clf_str(out, v.as_bytes(), HEADER_BUDGET),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.push(b'\n');
    out.n
}

#[cfg(test)]
mod tests;
