//! The line formats: every field, escaping, the bounds, and the caches.

use http::{HeaderValue, Method, StatusCode};

use super::*;
use crate::handler::ClientAddr;
use crate::serve::exchange::{Outcome, mono_ns};

/// `f`'s writing, from the start of a fresh buffer.
fn written(f: impl FnOnce(&mut Cur<'_>)) -> Vec<u8> {
    let mut b = Box::new([0; WINDOW]);
    let mut out = Cur { b: &mut b, n: 0 };
    f(&mut out);
    let n = out.n;
    b[..n].to_vec()
}

fn json_line(ex: &Exchange, tail: &Tail, cache: &mut Cache) -> Vec<u8> {
    let mut b = Box::new([0; WINDOW]);
    let n = json(&mut b, ex, tail, cache);
    b[..n].to_vec()
}

fn combined_line(ex: &Exchange) -> Vec<u8> {
    let mut b = Box::new([0; WINDOW]);
    let n = combined(&mut b, ex, &mut Cache::default());
    b[..n].to_vec()
}

fn ex(uri: &str, ua: Option<HeaderValue>) -> Exchange {
    let uri: http::Uri = uri.parse().unwrap();
    Exchange {
        started: mono_ns(),
        duration_ns: 1_234_567_000,
        method: Method::GET,
        path: uri.path_and_query().cloned(),
        version: Version::HTTP_11,
        client: ClientAddr("[::ffff:10.1.2.3]:5000".parse().unwrap()),
        status: StatusCode::NOT_FOUND,
        bytes: 19,
        outcome: Outcome::Written,
        request_id: Some(HeaderValue::from_static("abc-1")),
        user_agent: ua,
        referer: None,
        tally: None,
    }
}

#[test]
fn json_line_parses_with_every_field() {
    let ua = HeaderValue::from_bytes(b"bad \"agent\"\t \xff").unwrap();
    let out = json_line(
        &ex("/a?b=1", Some(ua)),
        &json_tail(7),
        &mut Cache::default(),
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
    let out = json_line(&ex("/", None), &json_tail(1), &mut Cache::default());
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["user_agent"].is_null());
}

#[test]
fn hostile_values_are_cut_to_a_bounded_line() {
    let long_path = format!("/{}", "%22".repeat(5000));
    let ua = HeaderValue::from_bytes(&[0xfe; 9000]).unwrap();
    // Every field a client chooses at its longest, escaped at its most (a non-UTF-8 user
    // agent: 6 bytes per byte), the longest method and id, an IPv6 client: the line still
    // fits (writing past `MAX_LINE` would panic).
    let mut e = ex(&long_path, Some(ua.clone()));
    e.method = Method::from_bytes(&[b'M'; 100]).unwrap();
    e.request_id = Some(HeaderValue::from_str(&"i".repeat(128)).unwrap());
    e.referer = Some(ua.clone());
    e.client = ClientAddr(
        "[2001:db8:1234:5678:9abc:def0:1234:5678]:1"
            .parse()
            .unwrap(),
    );
    e.bytes = u64::MAX;
    e.duration_ns = u64::MAX;
    let out = json_line(&e, &json_tail(u64::MAX), &mut Cache::default());
    assert!(out.len() <= 3100, "{}", out.len());
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["path"].as_str().unwrap().ends_with("..."));
    assert_eq!(v["generation"], u64::MAX);
    let out = combined_line(&e);
    assert!(out.len() <= 3300, "{}", out.len());
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
}

#[test]
fn combined_line_shape() {
    let mut e = ex("/x", Some(HeaderValue::from_static("curl/8")));
    e.path = Some(http::uri::PathAndQuery::from_static("/p?q=1"));
    e.referer = Some(HeaderValue::from_static("http://a/\"b\""));
    let s = String::from_utf8(combined_line(&e)).unwrap();
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
        let mut cache = ClientText::default();
        let got = written(|out| client(out, &e, &mut cache));
        assert_eq!(String::from_utf8(got).unwrap(), want);
        // Again from the cache, then after another address.
        let got = written(|out| client(out, &e, &mut cache));
        assert_eq!(String::from_utf8(got).unwrap(), want);
        let mut other = ex("/", None);
        other.client = ClientAddr(
            "[2001:db8:ffff:ffff:ffff:ffff:255.255.255.255]:1"
                .parse()
                .unwrap(),
        );
        let got = written(|out| client(out, &other, &mut cache));
        assert_eq!(
            String::from_utf8(got).unwrap(),
            other.client.0.ip().to_string()
        );
        let got = written(|out| client(out, &e, &mut cache));
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    for o in 0..=255u8 {
        let d = DECIMAL[usize::from(o)];
        assert_eq!(&d[..usize::from(d[3])], o.to_string().as_bytes());
    }
}

#[test]
fn lines_sharing_a_cache_each_carry_their_own_request() {
    // One output's cache across requests of changing clients, user agents, ids, methods
    // and versions: each line has its own.
    let mut cache = Cache::default();
    let ids = crate::observe::request_id::RequestIds::new();
    let tail = json_tail(3);
    for (i, (addr, ua, m, v)) in [
        ("10.0.0.1:1", Some("a/1"), Method::GET, Version::HTTP_11),
        (
            "10.0.0.1:2",
            Some("b/2 \"x\""),
            Method::POST,
            Version::HTTP_10,
        ),
        ("[2001:db8::7]:3", None, Method::OPTIONS, Version::HTTP_2),
        (
            "10.0.0.1:1",
            Some("a/1"),
            Method::from_bytes(b"PURGE").unwrap(),
            Version::HTTP_09,
        ),
        (
            "192.168.100.200:1",
            Some("a/1"),
            Method::DELETE,
            Version::HTTP_3,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = ex("/p", ua.map(HeaderValue::from_static));
        e.client = ClientAddr(addr.parse().unwrap());
        e.method = m.clone();
        e.version = v;
        let id = ids.for_request(None);
        e.request_id = Some(id.clone());
        let out = json_line(&e, &tail, &mut cache);
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["client"], e.client.0.ip().to_string(), "line {i}");
        assert_eq!(j["user_agent"].as_str(), ua, "line {i}");
        assert_eq!(j["method"], m.as_str(), "line {i}");
        assert_eq!(j["protocol"], format!("{v:?}"), "line {i}");
        assert_eq!(j["request_id"], id.to_str().unwrap(), "line {i}");
        assert_eq!(j["generation"], 3, "line {i}");
    }
}

#[test]
fn the_plain_scan_agrees_with_the_table() {
    for b in 0..=255u8 {
        assert_eq!(all_plain(&[b]), PLAIN[usize::from(b)], "{b}");
        let mut long = [b'a'; 100];
        long[77] = b;
        assert_eq!(all_plain(&long), PLAIN[usize::from(b)], "{b}");
    }
    assert!(all_plain(b""));
}

#[test]
fn json_escapes_and_cuts_at_character_boundaries() {
    let esc =
        |v: &[u8], budget| String::from_utf8(written(|out| json_str(out, v, budget))).unwrap();
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
    let long = Method::from_bytes(&[b'M'; 40]).unwrap();
    assert_eq!(
        written(|out| method(out, &long)),
        [&[b'M'; 32][..], b"..."].concat()
    );
    for m in [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
        Method::from_bytes(b"PROPFIND").unwrap(),
    ] {
        // Followed by a field, as in a line: the padding is overwritten.
        let got = written(|out| {
            method(out, &m);
            out.push(b'|');
        });
        assert_eq!(got, format!("{m}|").as_bytes());
    }
    for v in [esc("ab€".as_bytes(), 4), esc(b"\x01\x01", 7)] {
        let line = format!("\"{v}\"");
        serde_json::from_str::<String>(&line).unwrap();
    }
}
