//! New connections, which a worker serves without registering them with its poller until they
//! must wait (`serve::lazy`): a client that sends its request in pieces makes the connection
//! wait and is served, on a kept-alive connection too; a request whose body the handler leaves
//! unread gets its whole answer and the end of the stream, not a reset (hyper's drain of that
//! body is a read that must not be put off).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Apphost, parse_response, read_one_response, unique_port};

/// A host with one server on a fresh port: `/pid` and `/hello`.
fn start() -> (Apphost, u16) {
    let port = unique_port();
    let host = Apphost::start(&format!(
        "servers:\n  s:\n    address: \"127.0.0.1:{port}\"\n    routes:\n      \"/pid\": pid\n      \"/hello\": {{ handler: hello, text: Hello }}\n"
    ));
    host.wait_serving(port);
    (host, port)
}

fn connect(port: u16) -> TcpStream {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Write `piece` and let it reach the server before the next one: the worker's read finds this
/// piece alone, and its next read finds nothing yet (the connection must wait).
fn send_piece(s: &mut TcpStream, piece: &[u8]) {
    s.write_all(piece).unwrap();
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn a_request_sent_in_pieces_waits_and_is_served_then_again_on_the_same_connection() {
    let (_host, port) = start();
    let mut s = connect(port);
    for piece in [&b"GET /hel"[..], b"lo HTTP/1.1\r\nHo", b"st: x\r\n"] {
        send_piece(&mut s, piece);
    }
    s.write_all(b"\r\n").unwrap();
    let r = parse_response(read_one_response(&mut s).as_bytes(), false).unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "Hello\n"));
    // The connection is kept alive: the next request, after a pause, is served on it too, and
    // the last one (in two pieces) with `Connection: close` ends it with a FIN.
    send_piece(&mut s, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = parse_response(read_one_response(&mut s).as_bytes(), false).unwrap();
    assert_eq!(r.status, 200);
    send_piece(&mut s, b"GET /hello HTTP/1.1\r\n");
    s.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the end of the stream, not a reset");
    let r = parse_response(&rest, false).unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "Hello\n"));
}

#[test]
fn a_body_left_unread_gets_its_answer_and_the_end_of_the_stream_not_a_reset() {
    let (_host, port) = start();
    let body = vec![b'x'; 5000];
    for i in 0..40 {
        let mut s = connect(port);
        let head = format!(
            "POST /pid HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut all = head.into_bytes();
        all.extend_from_slice(&body);
        s.write_all(&all).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("request {i}: {e} after {raw:?}"));
        let r = parse_response(&raw, false).unwrap();
        // Built-in handlers answer GET and HEAD: the body is never read.
        assert_eq!(r.status, 405, "request {i}");
    }
}
