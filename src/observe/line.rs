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
//! A line is written straight into its sink's buffer ([`Buf`]: [`MAX_LINE`] bytes and [`SLACK`]
//! more) by a [`Cur`]. The budgets keep every line well within [`MAX_LINE`] (about 3,000 bytes
//! at most), so the fixed-size writes need no bounds check (the position is taken modulo
//! [`MAX_LINE`], which the compiler sees keeps them in the buffer) and no library call. The
//! constant fragments are merged with their neighbours into a few padded fixed-size texts, whose
//! padding what follows overwrites: the opening up to the client's value with the time (made once
//! a second, [`TimeCache`]), the client's address (formatted once for a run of lines from one
//! client, [`Cache`]), a standard method with the keys around it, the status with its keys, the
//! protocol with the user agent's key (with `null` and the request id's key when there is no user
//! agent), a made request id, the generation's tail. Numbers below 1000 (a body size, a duration's
//! milliseconds) and the milliseconds' fractions are 4-byte copies from tables; a short value (a
//! path below 8 bytes, like `/`) is checked and copied in one pass, a longer one scanned 16
//! bytes a step and copied. What is rare (escaping, long numbers, other methods) runs out of
//! line.
//!
//! The usual JSON line (`GET /`, no user agent, a made id) costs about 245 instructions with its
//! queueing ([`super::sink::Sink::append_with`], `AccessLog::finished` inclusive; 400 before
//! these measures, BENCHMARKS.md (ah)); of them about 25 are the sink's lock (`std::sync::Mutex`
//! and its poison checks) and 15 the function's entry and exit.

use http::Version;

use super::clock::{JSON_HEAD_LEN, JSON_MS_AT, TimeCache};
use crate::serve::exchange::Exchange;
use cur::{Cur, DECIMAL, FRACTION, PLAIN, Padded, num};

/// The longest line (the budgets below and the fixed fields fit well within it); at most
/// `PIPE_BUF`, so one `write` of a line to a pipe is never split. A power of two: see [`Cur`].
pub(crate) const MAX_LINE: usize = 4096;
const _: () = assert!(MAX_LINE.is_power_of_two());

/// Room past a line's end for the fixed-size copies (see [`Cur::fixed`]): the longest is 64.
const SLACK: usize = 64;

/// The bytes a line is written into: [`MAX_LINE`] and [`SLACK`].
pub(crate) const WINDOW: usize = MAX_LINE + SLACK;

const PATH_BUDGET: usize = 2048;
const HEADER_BUDGET: usize = 512;
const METHOD_BUDGET: usize = 32;

/// A buffer a line is written into, whatever it held before (the sink's own buffer, so a line
/// is formatted where it is queued: see [`super::sink::Sink::append_with`]).
pub(crate) type Buf = [u8; WINDOW];

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
    /// The address as the 128 bits of an IPv6 one (an IPv4 address as its v4-mapped form);
    /// at first `::` (0), whose text it holds then.
    key: u128,
    /// Its text, padded; `len` bytes of it count.
    text: [u8; CLIENT_MAX],
    len: usize,
}

impl Default for ClientText {
    fn default() -> ClientText {
        let mut text = [0; CLIENT_MAX];
        text[..2].copy_from_slice(b"::");
        ClientText {
            key: 0,
            text,
            len: 2,
        }
    }
}

/// The key of an address in [`ClientText`]: IPv4 addresses as IPv4-mapped IPv6 ones (which are
/// written as IPv4, either way).
#[inline(always)]
fn client_key(a: &std::net::SocketAddr) -> u128 {
    match a {
        std::net::SocketAddr::V4(a) => (0xffff << 32) | u128::from(a.ip().to_bits()),
        std::net::SocketAddr::V6(a) => a.ip().to_bits(),
    }
}

/// Room for any address's text (IPv6 at its longest is 45 bytes).
const CLIENT_MAX: usize = 48;

/// The client's address as text: the cached text when it is the client of the line before
/// (see [`ClientText`]), else formatted and cached.
#[inline(always)]
fn client(out: &mut Cur<'_>, ex: &Exchange, cache: &mut ClientText) {
    let key = client_key(&ex.client.0);
    if cache.key != key {
        client_anew(cache, key);
    }
    out.fixed(&cache.text, cache.len);
}

/// Format the address of `key` (see [`client_key`]) into `cache`: an IPv4 address (the usual
/// case, and a v4-mapped IPv6 one) from the table of numbers, one 4-byte copy per octet; other
/// IPv6 addresses with the standard formatter.
#[inline(never)]
fn client_anew(cache: &mut ClientText, key: u128) {
    let v6 = std::net::Ipv6Addr::from_bits(key);
    let mut text = [0; CLIENT_MAX];
    let len = match v6.to_ipv4_mapped() {
        Some(v4) => {
            // Each octet's table entry is copied whole (its 4th byte is overwritten by what
            // follows, or lies past the end); only its length counts.
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                let e = &DECIMAL[usize::from(o)];
                text[n..n + 3].copy_from_slice(&e[..3]);
                n += usize::from(e[3]);
            }
            n
        }
        None => {
            let s = v6.to_string();
            let len = s.len().min(CLIENT_MAX);
            text[..len].copy_from_slice(&s.as_bytes()[..len]);
            len
        }
    };
    *cache = ClientText { key, text, len };
}

/// The versions' places in the tables below.
fn version_index(v: Version) -> usize {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_11 => 2,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 5,
    }
}

/// Each version as text.
static PROTOCOL: [Padded<8>; 6] = [
    Padded::new(b"HTTP/0.9"),
    Padded::new(b"HTTP/1.0"),
    Padded::new(b"HTTP/1.1"),
    Padded::new(b"HTTP/2.0"),
    Padded::new(b"HTTP/3.0"),
    Padded::new(b"HTTP/?"),
];

/// A JSON line's text from the duration's end into the user agent's value, for each version.
static JSON_PROTOCOL: [Padded<48>; 6] = [
    Padded::new(b",\"protocol\":\"HTTP/0.9\",\"user_agent\":\""),
    Padded::new(b",\"protocol\":\"HTTP/1.0\",\"user_agent\":\""),
    Padded::new(b",\"protocol\":\"HTTP/1.1\",\"user_agent\":\""),
    Padded::new(b",\"protocol\":\"HTTP/2.0\",\"user_agent\":\""),
    Padded::new(b",\"protocol\":\"HTTP/3.0\",\"user_agent\":\""),
    Padded::new(b",\"protocol\":\"HTTP/?\",\"user_agent\":\""),
];

/// A JSON line's text from the duration's end into the request id's value, for each version,
/// when there is no user agent.
static JSON_PROTOCOL_NO_AGENT: [Padded<64>; 6] = [
    Padded::new(b",\"protocol\":\"HTTP/0.9\",\"user_agent\":null,\"request_id\":\""),
    Padded::new(b",\"protocol\":\"HTTP/1.0\",\"user_agent\":null,\"request_id\":\""),
    Padded::new(b",\"protocol\":\"HTTP/1.1\",\"user_agent\":null,\"request_id\":\""),
    Padded::new(b",\"protocol\":\"HTTP/2.0\",\"user_agent\":null,\"request_id\":\""),
    Padded::new(b",\"protocol\":\"HTTP/3.0\",\"user_agent\":null,\"request_id\":\""),
    Padded::new(b",\"protocol\":\"HTTP/?\",\"user_agent\":null,\"request_id\":\""),
];

/// Append `v` as JSON string content, at most `budget` bytes of it (then `...`).
#[inline(always)]
fn json_str(out: &mut Cur<'_>, v: &[u8], budget: usize) {
    // The usual value: printable ASCII with nothing to escape, within its budget: one copy.
    if !out.put_plain(v, budget) {
        out.out_of_line(move |o| json_escaped(o, v, budget));
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
    if out.put_plain(v, budget) {
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

/// The standard methods' places in the tables below (`None`: another method).
#[inline(always)]
fn method_index(m: &http::Method) -> Option<usize> {
    Some(match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => return None,
    })
}

/// The standard methods as text.
static METHOD: [Padded<8>; 7] = [
    Padded::new(b"GET"),
    Padded::new(b"HEAD"),
    Padded::new(b"POST"),
    Padded::new(b"PUT"),
    Padded::new(b"DELETE"),
    Padded::new(b"PATCH"),
    Padded::new(b"OPTIONS"),
];

/// A JSON line's text from the client's value's end to the path's value, for each standard
/// method.
static JSON_METHOD: [Padded<32>; 7] = [
    Padded::new(b"\",\"method\":\"GET\",\"path\":\""),
    Padded::new(b"\",\"method\":\"HEAD\",\"path\":\""),
    Padded::new(b"\",\"method\":\"POST\",\"path\":\""),
    Padded::new(b"\",\"method\":\"PUT\",\"path\":\""),
    Padded::new(b"\",\"method\":\"DELETE\",\"path\":\""),
    Padded::new(b"\",\"method\":\"PATCH\",\"path\":\""),
    Padded::new(b"\",\"method\":\"OPTIONS\",\"path\":\""),
];

/// A method is an HTTP token (`http` checks each byte of an extension method), so it holds
/// nothing to escape in either format: only its length is checked. A standard method is one
/// fixed-size copy.
#[inline(always)]
fn method(out: &mut Cur<'_>, m: &http::Method) {
    match method_index(m) {
        Some(i) => out.padded(&METHOD[i]),
        None => method_other(out, m.as_str().as_bytes()),
    }
}

fn method_other(out: &mut Cur<'_>, m: &[u8]) {
    debug_assert!(m.iter().all(|&b| PLAIN[usize::from(b)]));
    if m.len() <= METHOD_BUDGET {
        out.put(m);
    } else {
        out.put(&m[..METHOD_BUDGET]);
        out.lit(b"...");
    }
}

fn path_bytes(ex: &Exchange) -> &[u8] {
    match &ex.path {
        Some(pq) => pq.as_str().as_bytes(),
        None => no_path(ex),
    }
}

/// What stands for the path of a request without one: a `CONNECT`'s target, else `/`.
#[cold]
fn no_path(ex: &Exchange) -> &[u8] {
    match &ex.authority {
        Some(a) => a.as_str().as_bytes(),
        None => b"/",
    }
}

/// The end of a JSON line for one generation, `,"generation":N}` and the newline, after a
/// request id (with its closing quote first) and after `null` (made once per access log: it
/// never changes).
#[derive(Debug)]
pub(crate) struct Tail {
    after_id: Padded<TAIL_MAX>,
    after_null: Padded<TAIL_MAX>,
}

/// Room for the longest tail (a 20-digit generation: 37 bytes).
const TAIL_MAX: usize = 40;

/// The tail of the JSON lines of generation `generation`.
pub(crate) fn json_tail(generation: u64) -> Tail {
    let s = format!(",\"generation\":{generation}}}\n");
    Tail {
        after_id: Padded::new(format!("\"{s}").as_bytes()),
        after_null: Padded::new(s.as_bytes()),
    }
}

/// The status (three digits) between the path's value and the body's size.
static JSON_STATUS: Padded<32> = Padded::new(b"\",\"status\":000,\"bytes\":");
/// Where the digits are in [`JSON_STATUS`].
const JSON_STATUS_AT: usize = 11;

/// Write the JSON line for `ex` (with its newline) at the start of `buf`; returns its length.
/// `tail` is [`json_tail`]'s, `cache` its output's.
pub(crate) fn json(buf: &mut Buf, ex: &Exchange, tail: &Tail, cache: &mut Cache) -> usize {
    let Cache {
        time,
        client: client_text,
    } = cache;
    let ms = time.start(ex.started);
    // The opening up to the client, with this second, then its milliseconds over the `.000`.
    let head: &mut [u8; 48] = (&mut buf[..48]).try_into().unwrap();
    *head = time.json_head;
    head[JSON_MS_AT..JSON_MS_AT + 4].copy_from_slice(&FRACTION[ms as usize & 1023]);
    let out = &mut Cur {
        b: buf,
        n: JSON_HEAD_LEN,
    };
    client(out, ex, client_text);
    match method_index(&ex.method) {
        Some(i) => out.padded(&JSON_METHOD[i]),
        None => {
            out.lit(b"\",\"method\":\"");
            out.out_of_line(move |o| method_other(o, ex.method.as_str().as_bytes()));
            out.lit(b"\",\"path\":\"");
        }
    }
    match &ex.path {
        Some(p) => json_str(out, p.as_str().as_bytes(), PATH_BUDGET),
        None => out.out_of_line(move |o| json_escaped(o, no_path(ex), PATH_BUDGET)),
    }
    // A status is three digits (`http` checks it).
    let status = &DECIMAL[usize::from(ex.status.as_u16()) & 1023];
    out.fixed(&JSON_STATUS.bytes, JSON_STATUS.len)[JSON_STATUS_AT..JSON_STATUS_AT + 3]
        .copy_from_slice(&status[..3]);
    num(out, ex.bytes);
    out.lit(b",\"duration_ms\":");
    let us = ex.duration_ns / 1000;
    let ms = us / 1000;
    num(out, ms);
    out.fixed(&FRACTION[(us - ms * 1000) as usize & 1023], 4);
    // Up to the request id's opening quote.
    let v = version_index(ex.version);
    match &ex.user_agent {
        Some(ua) => {
            out.padded(&JSON_PROTOCOL[v]);
            json_str(out, ua.as_bytes(), HEADER_BUDGET);
            out.lit(b"\",\"request_id\":\"");
        }
        None => out.padded(&JSON_PROTOCOL_NO_AGENT[v]),
    }
    match ex.id_bytes() {
        // Nothing to escape: a made id is hex and `-`, a given one passed
        // `request_id::acceptable` (at most 128 bytes of `A-Z a-z 0-9 - _ . : + / = @`).
        Some(id) => {
            debug_assert!(id.iter().all(|&b| PLAIN[usize::from(b)]));
            // A made id's length is fixed: a copy of a fixed size.
            match <&[u8; MADE_ID_LEN]>::try_from(id) {
                Ok(made) => out.lit(made),
                Err(_) => out.out_of_line(move |o| o.put(id)),
            }
            out.padded(&tail.after_id);
        }
        None => {
            // `null` over the opening quote.
            out.n -= 1;
            out.lit(b"null");
            out.padded(&tail.after_null);
        }
    }
    debug_assert!(out.n <= MAX_LINE);
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
    out.lit(b" - - [");
    out.lit(&cache.time.clf);
    out.lit(b"] \"");
    method(out, &ex.method);
    out.push(b' ');
    clf_str(out, path_bytes(ex), PATH_BUDGET);
    out.push(b' ');
    out.padded(&PROTOCOL[version_index(ex.version)]);
    out.lit(b"\" ");
    num(out, u64::from(ex.status.as_u16()));
    out.push(b' ');
    num(out, ex.bytes);
    for h in [&ex.referer, &ex.user_agent] {
        out.lit(b" \"");
        match h {
            Some(v) => clf_str(out, v.as_bytes(), HEADER_BUDGET),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.push(b'\n');
    debug_assert!(out.n <= MAX_LINE);
    out.n
}

mod cur;
#[cfg(test)]
mod tests;
