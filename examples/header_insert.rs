//! What adding `x-request-id` to a response's headers costs by itself, in `http`'s `HeaderMap`,
//! with each of its ways of adding a header: the part of a request id's cost that is not
//! apphost's (BENCHMARKS (aj)). Run under callgrind by `bench/header_insert.sh`, which subtracts
//! the `none` run from each other one and divides by the rounds:
//!
//! ```sh
//! bench/header_insert.sh            # instructions per added header, each way
//! ```
//!
//! Each round makes the map a `hello` response has (`content-type`, as apphost's `text` does),
//! adds the id one way, and drops the map (the id's release included, as when hyper has written
//! the response). The ways: `insert` (apphost's, with a `const` name), `insert-ref` (a
//! `&HeaderName`), `insert-str` (a `&'static str` name), `append`, `entry` (`or_insert`: keeps a
//! value the handler set), `entry-replace` (`entry`, then the value set either way: `insert`'s
//! meaning) and `none` (the map and the id alone, subtracted). Allocations go through mimalloc, as in the `apphost`
//! binary.

use std::hint::black_box;

use http::HeaderMap;
use http::header::{CONTENT_TYPE, Entry, HeaderName, HeaderValue};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The name as apphost writes it (`serve::exchange::X_REQUEST_ID_NAME`).
#[allow(clippy::declare_interior_mutable_const)]
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The rounds `bench/header_insert.sh` divides by.
const ROUNDS: usize = 100_000;

#[inline(never)]
fn response_headers() -> HeaderMap {
    let mut m = HeaderMap::new();
    m.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    m
}

// One function a way, none inlined into another, so each is compiled as it would be alone.
#[inline(never)]
fn insert(m: &mut HeaderMap, id: HeaderValue) {
    m.insert(X_REQUEST_ID, id);
}

#[inline(never)]
fn insert_ref(m: &mut HeaderMap, id: HeaderValue) {
    static NAME: HeaderName = X_REQUEST_ID;
    m.insert(&NAME, id);
}

#[inline(never)]
fn insert_str(m: &mut HeaderMap, id: HeaderValue) {
    m.insert("x-request-id", id);
}

#[inline(never)]
fn append(m: &mut HeaderMap, id: HeaderValue) {
    m.append(X_REQUEST_ID, id);
}

#[inline(never)]
fn entry(m: &mut HeaderMap, id: HeaderValue) {
    m.entry(X_REQUEST_ID).or_insert(id);
}

#[inline(never)]
fn entry_replace(m: &mut HeaderMap, id: HeaderValue) {
    match m.entry(X_REQUEST_ID) {
        Entry::Vacant(v) => {
            v.insert(id);
        }
        Entry::Occupied(mut o) => {
            o.insert(id);
        }
    }
}

fn main() {
    let way = std::env::args().nth(1).unwrap_or_else(|| "insert".into());
    let known = [
        "none",
        "insert",
        "insert-ref",
        "insert-str",
        "append",
        "entry",
        "entry-replace",
    ];
    if !known.contains(&way.as_str()) {
        eprintln!("usage: header_insert [{}]", known.join("|"));
        std::process::exit(2);
    }
    // A made id: 33 bytes of a shared buffer, as apphost's ids are.
    let block = bytes::Bytes::from(b"0123456789abcdef-0000000000000001".repeat(4));
    for i in 0..ROUNDS {
        let mut m = black_box(response_headers());
        let at = (i % 4) * 33;
        let id = HeaderValue::from_maybe_shared(block.slice(at..at + 33)).expect("visible ASCII");
        match way.as_str() {
            "insert" => insert(&mut m, id),
            "insert-ref" => insert_ref(&mut m, id),
            "insert-str" => insert_str(&mut m, id),
            "append" => append(&mut m, id),
            "entry" => entry(&mut m, id),
            "entry-replace" => entry_replace(&mut m, id),
            _ => drop(black_box(id)),
        }
        black_box(&m);
    }
    println!("{way}: {ROUNDS} rounds");
}
