//! HTTP/2 on the real binary, spoken frame by frame (RFC 9113) so the test decides exactly
//! when each frame goes out: the two-step GOAWAY of a drain (a request that crosses the first
//! GOAWAY on the wire is served), a client that never answers the GOAWAY's PING (cut after
//! `idle_timeout`, not held for ever), and a client that ignores
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (the streams beyond it are refused).
//!
//! Header blocks are written by hand (HPACK literals without Huffman coding); a response's
//! status is read from the first byte of its header block: `0x88` is the static table's
//! `:status 200`, which is how h2 encodes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::harness::*;
use crate::support::*;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;
const END_HEADERS: u8 = 4;
/// The largest stream id: the first GOAWAY of a graceful shutdown carries it.
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// RST_STREAM / GOAWAY error codes.
const NO_ERROR: u32 = 0;
const REFUSED_STREAM: u32 = 7;

#[derive(Debug, Clone)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.payload[i..i + 4].try_into().unwrap()) & MAX_STREAM_ID
    }

    /// A GOAWAY's last stream id and error code.
    fn goaway(&self) -> Option<(u32, u32)> {
        (self.ty == GOAWAY).then(|| (self.u32_at(0), self.u32_at(4)))
    }
}

enum Next {
    Frame(Frame),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing before the deadline.
    Quiet,
}

/// An HTTP/2 client connection over plain TCP (h2c with prior knowledge) that answers the
/// server's SETTINGS and nothing else by itself: PINGs are the test's to answer.
struct RawH2 {
    s: TcpStream,
    buf: Vec<u8>,
    port: u16,
}

impl RawH2 {
    fn connect(port: u16) -> RawH2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut c = RawH2 {
            s,
            buf: Vec::new(),
            port,
        };
        c.send(SETTINGS, 0, 0, &[]);
        c
    }

    fn send(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    /// `GET path` on `stream`, with no body.
    fn get(&mut self, stream: u32, path: &str) {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
        for (name_index, value) in [
            (4u8, path.to_string()),
            (1, format!("127.0.0.1:{}", self.port)),
        ] {
            // Literal without indexing, name from the static table (:path 4, :authority 1).
            block.push(name_index);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.send(HEADERS, END_STREAM | END_HEADERS, stream, &block);
    }

    /// The next frame other than SETTINGS (answered) and WINDOW_UPDATE, before `deadline`.
    fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let frame = Frame {
                        ty: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes(f[5..9].try_into().unwrap()) & MAX_STREAM_ID,
                        payload: f[9..].to_vec(),
                    };
                    match frame.ty {
                        SETTINGS if frame.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]),
                        SETTINGS | 8 => {}
                        _ => return Next::Frame(frame),
                    }
                    continue;
                }
            }
            if Instant::now() >= deadline {
                return Next::Quiet;
            }
            let mut b = [0u8; 16 << 10];
            match self.s.read(&mut b) {
                Ok(0) => return Next::Closed,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Next::Closed,
            }
        }
    }

    /// Every frame until the server closes the connection (panics after `timeout`).
    fn until_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            match self.next(deadline) {
                Next::Frame(f) => got.push(f),
                Next::Closed => return got,
                Next::Quiet => panic!("not closed within {timeout:?}; frames: {got:?}"),
            }
        }
    }

    /// Frames until `done` says so (panics after `timeout` or on a close); all of them.
    fn until(&mut self, timeout: Duration, mut done: impl FnMut(&[Frame]) -> bool) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !done(&got) {
            match self.next(deadline) {
                Next::Frame(f) => got.push(f),
                Next::Closed => panic!("closed; frames: {got:?}"),
                Next::Quiet => panic!("timed out; frames: {got:?}"),
            }
        }
        got
    }

    /// The response on `stream`: its status byte and its body (panics on a reset).
    fn response(&mut self, stream: u32) -> (u8, String) {
        let frames = self.until(T, |f| {
            f.iter()
                .any(|f| f.stream == stream && f.flags & END_STREAM != 0 || f.ty == RST_STREAM)
        });
        response_in(&frames, stream)
    }
}

/// The status byte and body of `stream`'s response among `frames`.
fn response_in(frames: &[Frame], stream: u32) -> (u8, String) {
    let mine: Vec<&Frame> = frames.iter().filter(|f| f.stream == stream).collect();
    assert!(
        !mine.iter().any(|f| f.ty == RST_STREAM),
        "stream {stream} was reset: {frames:?}"
    );
    let head = mine
        .iter()
        .find(|f| f.ty == HEADERS)
        .unwrap_or_else(|| panic!("no response head on stream {stream}: {frames:?}"));
    let body: Vec<u8> = mine
        .iter()
        .filter(|f| f.ty == DATA)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert!(
        mine.iter().any(|f| f.flags & END_STREAM != 0),
        "stream {stream} did not end: {frames:?}"
    );
    (head.payload[0], String::from_utf8(body).unwrap())
}

/// The first GOAWAY of a graceful shutdown (largest stream id, no error) and its PING's
/// payload, read from `c` (panics if the connection closes or they do not come).
fn first_goaway_and_ping(c: &mut RawH2) -> Vec<u8> {
    let frames = c.until(T, |f| {
        f.iter().any(|f| f.ty == PING && f.flags & ACK == 0) && f.iter().any(|f| f.ty == GOAWAY)
    });
    let goaways: Vec<_> = frames.iter().filter_map(Frame::goaway).collect();
    assert_eq!(
        goaways,
        [(MAX_STREAM_ID, NO_ERROR)],
        "the first GOAWAY must let streams in flight in: {frames:?}"
    );
    let ping = frames.iter().find(|f| f.ty == PING).unwrap();
    ping.payload.clone()
}

fn config(port: u16, extra: &str) -> String {
    format!(
        "graceful: true\nshutdown_timeout: 20s\n{extra}watch: {{ executable: false, config: false }}\n\
         servers:\n  s1:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \
         \"/pid\": pid\n      \"/sleep\": {{ handler: sleep, duration: 2s }}\n"
    )
}

/// A drain sends the first GOAWAY (last stream id 2^31-1) with a PING, and the final one (the
/// real last stream id) only once the PING is answered. A request the client sends between the
/// two (here: after reading the first, before answering the PING, as a request that crossed it
/// on the wire would arrive) is served by the old worker, on a connection that had made a
/// request before and on one that had not; the final GOAWAY then names it. Neither connection is
/// cut while the client takes its time (longer than `keepalive_grace`) to answer.
#[test]
fn a_request_sent_between_the_two_goaways_of_a_drain_is_served() {
    let port = low_port();
    let host = Host::start(&config(port, "keepalive_grace: 200ms\n"));
    let old = host.wait_serving(port);
    let mut used = RawH2::connect(port);
    used.get(1, "/pid");
    assert_eq!(used.response(1), (0x88, format!("{old}\n")));
    let mut fresh = RawH2::connect(port);
    // Its SETTINGS exchanged (`next` answers them), so h2's handshake is done before the drain.
    let quiet = fresh.next(Instant::now() + Duration::from_millis(200));
    assert!(
        matches!(quiet, Next::Quiet),
        "a fresh connection got a frame or closed"
    );

    host.signal(Signal::USR1);
    let new = wait_new_pid(&host, port, old);
    assert_ne!(new, old);
    let ping_used = first_goaway_and_ping(&mut used);
    let ping_fresh = first_goaway_and_ping(&mut fresh);
    // Six times the grace without answering: neither connection is cut nor sent its final
    // GOAWAY.
    for c in [&mut used, &mut fresh] {
        match c.next(Instant::now() + Duration::from_millis(600)) {
            Next::Quiet => {}
            Next::Frame(f) => panic!("before the PING was answered: {f:?}"),
            Next::Closed => panic!("cut before the PING was answered"),
        }
    }
    for (c, stream, ping) in [(&mut used, 3, ping_used), (&mut fresh, 1, ping_fresh)] {
        c.get(stream, "/pid");
        c.send(PING, ACK, 0, &ping);
        let frames = c.until_closed(T);
        assert_eq!(
            response_in(&frames, stream),
            (0x88, format!("{old}\n")),
            "served by the old worker"
        );
        let goaways: Vec<_> = frames.iter().filter_map(Frame::goaway).collect();
        assert_eq!(
            goaways,
            [(stream, NO_ERROR)],
            "the final GOAWAY names the request sent in the window: {frames:?}"
        );
    }
    wait_gone(old, T, "the old worker, its connections closed");
}

/// An HTTP/2 connection idle for `idle_timeout` gets the first GOAWAY and a PING; a client that
/// never answers the PING (so h2 never sends the final GOAWAY nor closes) is cut an
/// `idle_timeout` later rather than held for ever.
#[test]
fn an_http2_client_that_never_answers_the_goaway_ping_is_cut_after_idle_timeout() {
    let port = low_port();
    let host = Host::start(&config(port, "idle_timeout: 1s\n"));
    let pid = host.wait_serving(port);
    let mut c = RawH2::connect(port);
    c.get(1, "/pid");
    assert_eq!(c.response(1), (0x88, format!("{pid}\n")));
    let answered = Instant::now();
    first_goaway_and_ping(&mut c);
    let told = Instant::now();
    assert!(
        told - answered >= Duration::from_millis(900),
        "GOAWAY {:?} after the response, before idle_timeout",
        told - answered
    );
    let frames = c.until_closed(Duration::from_secs(10));
    let cut = Instant::now();
    assert!(
        frames.iter().all(|f| f.goaway().is_none()),
        "a final GOAWAY without the PING's answer: {frames:?}"
    );
    assert!(
        cut - told >= Duration::from_millis(700),
        "cut {:?} after the GOAWAY, before its client had idle_timeout to answer",
        cut - told
    );
    assert_eq!(get(port, "/pid").status, 200, "the worker serves on");
    drop(host);
}

/// A client that ignores `SETTINGS_MAX_CONCURRENT_STREAMS` and opens more streams at once gets
/// the ones beyond it refused (`RST_STREAM REFUSED_STREAM`, which tells it they were not
/// processed) and the others served: streams per connection are bounded whatever the client
/// does.
#[test]
fn streams_beyond_max_concurrent_streams_are_refused() {
    let port = low_port();
    let host = Host::start(&config(port, "http2_max_concurrent_streams: 4\n"));
    let pid = host.wait_serving(port);
    let mut c = RawH2::connect(port);
    // Without waiting for the server's SETTINGS: ten /sleep streams at once.
    let streams: Vec<u32> = (0..10).map(|i| 1 + 2 * i).collect();
    for &s in &streams {
        c.get(s, "/sleep");
    }
    let frames = c.until(T, |f| {
        streams.iter().all(|&s| {
            f.iter()
                .any(|f| f.stream == s && (f.ty == RST_STREAM || f.flags & END_STREAM != 0))
        })
    });
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.ty == RST_STREAM)
        .map(|f| {
            assert_eq!(f.u32_at(0), REFUSED_STREAM, "{f:?}");
            f.stream
        })
        .collect();
    let served: Vec<u32> = streams
        .iter()
        .copied()
        .filter(|s| !refused.contains(s))
        .collect();
    assert_eq!(served.len(), 4, "refused {refused:?}; frames {frames:?}");
    for s in served {
        let (status, body) = response_in(&frames, s);
        assert_eq!(status, 0x88);
        assert_eq!(body, format!("{pid}\n{pid}\n"));
    }
    drop(host);
}
