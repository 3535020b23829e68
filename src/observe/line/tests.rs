//! The line formats: every field, escaping, the bounds, and the caches.

use http::{HeaderValue, Method, StatusCode};

use super::cur::all_plain;
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
    let mut e = Exchange::new(
        mono_ns(),
        Method::GET,
        Version::HTTP_11,
        ClientAddr("[::ffff:10.1.2.3]:5000".parse().unwrap()),
    );
    e.duration_ns = 1_234_567_000;
    e.path = uri.path_and_query().cloned();
    e.status = StatusCode::NOT_FOUND;
    e.bytes = 19;
    e.outcome = Outcome::Written;
    e.request_id = Some(HeaderValue::from_static("abc-1"));
    e.user_agent = ua;
    e
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
fn a_connect_logs_its_target_where_the_path_goes() {
    let mut e = ex("/", None);
    e.method = Method::CONNECT;
    e.path = None;
    e.authority = Some(Box::new("127.0.0.1:9000".parse().unwrap()));
    let out = json_line(&e, &json_tail(1), &mut Cache::default());
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (&v["method"], &v["path"]),
        (&"CONNECT".into(), &"127.0.0.1:9000".into())
    );
    let line = String::from_utf8(combined_line(&e)).unwrap();
    assert!(
        line.contains("\"CONNECT 127.0.0.1:9000 HTTP/1.1\""),
        "{line}"
    );
    // Neither a path nor a target (no request has neither): `/`.
    e.authority = None;
    let v: serde_json::Value =
        serde_json::from_slice(&json_line(&e, &json_tail(1), &mut Cache::default())).unwrap();
    assert_eq!(v["path"], "/");
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
    for m in methods() {
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

/// The text of field `name` in a JSON line, as written (up to the next `,"` or the end).
fn raw_field(line: &[u8], name: &str) -> String {
    let s = String::from_utf8(line.to_vec()).unwrap();
    let start = s.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
    let rest = &s[start..];
    let end = rest.find(",\"").unwrap_or(rest.len() - 2);
    rest[..end].to_string()
}

#[test]
fn every_version_agent_and_id_combination() {
    let ids = crate::observe::request_id::RequestIds::new();
    let made = ids.for_request(None);
    assert_eq!(made.len(), MADE_ID_LEN);
    let given = HeaderValue::from_static("given-id_1.2:3+4/5=6@7");
    let tail = json_tail(12_345);
    let mut cache = Cache::default();
    for v in [
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ] {
        for ua in [None, Some("curl/8"), Some("x \"y\"")] {
            for id in [Some(&made), Some(&given), None] {
                let mut e = ex("/q", ua.map(HeaderValue::from_static));
                e.version = v;
                e.request_id = id.cloned();
                let out = json_line(&e, &tail, &mut cache);
                let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
                let what = format!("{v:?} {ua:?} {id:?}");
                assert_eq!(j["protocol"], format!("{v:?}"), "{what}");
                assert_eq!(j["user_agent"].as_str(), ua, "{what}");
                assert_eq!(
                    j["request_id"].as_str(),
                    id.map(|i| i.to_str().unwrap()),
                    "{what}"
                );
                assert_eq!(j["generation"], 12_345, "{what}");
                assert_eq!(j.as_object().unwrap().len(), 11, "{what}");
                assert!(out.ends_with(b"}\n"), "{what}");
            }
        }
    }
}

#[test]
fn every_method_in_both_formats() {
    let long = Method::from_bytes(&[b'M'; 40]).unwrap();
    for m in methods().into_iter().chain([long.clone()]) {
        let want = if m == long {
            format!("{}...", "M".repeat(32))
        } else {
            m.to_string()
        };
        let mut e = ex("/m", None);
        e.method = m.clone();
        let out = json_line(&e, &json_tail(1), &mut Cache::default());
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["method"], want.as_str());
        assert_eq!(j["path"], "/m");
        let line = String::from_utf8(combined_line(&e)).unwrap();
        assert!(
            line.contains(&format!("] \"{want} /m HTTP/1.1\" ")),
            "{line}"
        );
    }
}

#[test]
fn numbers_at_the_edges_of_the_tables() {
    for n in [
        0,
        7,
        9,
        10,
        99,
        100,
        999,
        1000,
        1023,
        1024,
        12_345,
        u64::MAX,
    ] {
        let got = written(|out| {
            num(out, n);
            out.push(b'|');
        });
        assert_eq!(got, format!("{n}|").as_bytes());
    }
    for i in 0..1024 {
        let d = DECIMAL[i];
        assert_eq!(&d[..usize::from(d[3])], (i % 1000).to_string().as_bytes());
        assert_eq!(&FRACTION[i], format!(".{:03}", i % 1000).as_bytes());
    }
    // Statuses, body sizes and durations (µs precision) as written.
    for (status, bytes, ns, want_ms) in [
        (100, 0, 0, "0.000"),
        (404, 9, 999, "0.000"),
        (599, 10, 1_000, "0.001"),
        (999, 999, 999_999_999, "999.999"),
        (200, 1000, 1_000_000_000, "1000.000"),
        (200, u64::MAX, u64::MAX, "18446744073709.551"),
    ] {
        let mut e = ex("/", None);
        e.status = StatusCode::from_u16(status).unwrap();
        e.bytes = bytes;
        e.duration_ns = ns;
        let out = json_line(&e, &json_tail(0), &mut Cache::default());
        assert_eq!(raw_field(&out, "status"), status.to_string());
        assert_eq!(raw_field(&out, "bytes"), bytes.to_string());
        assert_eq!(raw_field(&out, "duration_ms"), want_ms);
        serde_json::from_slice::<serde_json::Value>(&out).unwrap();
    }
}

#[test]
fn the_time_carries_its_milliseconds() {
    let mut cache = Cache::default();
    let e = ex("/", None);
    let out = json_line(&e, &json_tail(0), &mut cache);
    let t = raw_field(&out, "time");
    let t = t.trim_matches('"');
    let b = t.as_bytes();
    assert_eq!(b.len(), 24, "{t}");
    for (i, &c) in b.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(c, b'-'),
            10 => assert_eq!(c, b'T'),
            13 | 16 => assert_eq!(c, b':'),
            19 => assert_eq!(c, b'.'),
            23 => assert_eq!(c, b'Z'),
            _ => assert!(c.is_ascii_digit(), "{t}"),
        }
    }
    // The same second, 5 ms later (if still within it): the milliseconds follow the reading.
    let ms: u64 = t[20..23].parse().unwrap();
    if ms < 990 {
        let mut later = ex("/", None);
        later.started = e.started + 5_000_000;
        let out = json_line(&later, &json_tail(0), &mut cache);
        let t2 = raw_field(&out, "time");
        assert_eq!(&t2[1..21], &t[..20]);
        assert_eq!(t2[21..24].parse::<u64>().unwrap(), ms + 5);
    }
}

#[test]
fn values_at_their_budgets_are_whole_and_past_them_cut() {
    for (len, cut) in [(PATH_BUDGET, false), (PATH_BUDGET + 1, true)] {
        let path = format!("/{}", "p".repeat(len - 1));
        let ua = "u".repeat(len - PATH_BUDGET + HEADER_BUDGET);
        let e = ex(&path, Some(HeaderValue::from_str(&ua).unwrap()));
        let out = json_line(&e, &json_tail(0), &mut Cache::default());
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let (p, u) = (
            j["path"].as_str().unwrap(),
            j["user_agent"].as_str().unwrap(),
        );
        if cut {
            assert_eq!(p, format!("{}...", &path[..PATH_BUDGET]));
            assert_eq!(u, format!("{}...", &ua[..HEADER_BUDGET]));
        } else {
            assert_eq!((p, u), (path.as_str(), ua.as_str()));
        }
        let line = String::from_utf8(combined_line(&e)).unwrap();
        let (want_p, want_u) = if cut {
            (
                format!("{}...", &path[..PATH_BUDGET]),
                format!("{}...", &ua[..HEADER_BUDGET]),
            )
        } else {
            (path.clone(), ua.clone())
        };
        assert!(line.contains(&format!(" {want_p} HTTP/1.1\"")), "{len}");
        assert!(line.ends_with(&format!(" \"-\" \"{want_u}\"\n")), "{len}");
    }
}

#[test]
fn short_values_are_checked_as_they_are_copied() {
    let esc =
        |v: &[u8], budget| String::from_utf8(written(|out| json_str(out, v, budget))).unwrap();
    // Around the short copy's length (8), plain and with something to escape at either end.
    for len in [0, 1, 6, 7, 8, 9, 16, 17] {
        let plain = "a".repeat(len);
        assert_eq!(esc(plain.as_bytes(), 64), plain);
        if len > 0 {
            let mut v = plain.clone().into_bytes();
            v[len - 1] = b'"';
            assert_eq!(esc(&v, 64), format!("{}\\\"", &plain[1..]));
        }
        if len > 1 {
            let mut v = plain.clone().into_bytes();
            v[0] = 0x01;
            assert_eq!(esc(&v, 64), format!("\\u0001{}", &plain[1..]));
        }
    }
    // A short value past a (small) budget is cut, not copied.
    assert_eq!(esc(b"abcd", 2), "ab...");
    // Followed by more, as in a line: what a failed short copy wrote is overwritten.
    let got = written(|out| {
        json_str(out, b"ab\"", 64);
        out.lit(b"|");
    });
    assert_eq!(got, b"ab\\\"|");
}

#[test]
fn the_first_client_may_be_the_unspecified_address() {
    // The cache starts out holding `::`, the text of its initial key.
    for addr in ["[::]:1", "0.0.0.0:1", "[::]:2"] {
        let mut e = ex("/", None);
        e.client = ClientAddr(addr.parse().unwrap());
        let mut cache = ClientText::default();
        let got = written(|out| client(out, &e, &mut cache));
        assert_eq!(String::from_utf8(got).unwrap(), e.client.0.ip().to_string());
    }
}

/// Every standard method and an extension one.
fn methods() -> Vec<Method> {
    vec![
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
    ]
}
