//! Request ids: the `x-request-id` a request came with, when it is acceptable, else a new one.
//!
//! A client can send anything in a header, and the id is echoed in the response, written in the
//! access log and put in tracing spans, so one that is not 1 to [`MAX_LEN`] bytes of
//! `A-Z a-z 0-9 - _ . : + / = @` (enough for UUIDs, ULIDs, base64 and the ids of the usual
//! proxies and tracers) is not used: the request gets a new id instead, and the bad value goes
//! nowhere.
//!
//! A new id is `PPPPPPPPPPPPPPPP-N`: 64 random bits in hex, drawn once per worker process, and
//! that worker's count of ids given, in hex. Unique across generations and restarts (each
//! worker draws its own prefix; two prefixes colliding is a 2^-64 chance per pair of workers),
//! and cheap: a few bytes of formatting per request, no lock and no random draw. Ids are made
//! in blocks of [`BLOCK`] per thread (one atomic addition and one allocation per block, see
//! [`crate::sys::hex_ids`]), each the [`HeaderValue`] the response carries, so putting an id in
//! the response and keeping it for the access log copies nothing. (So a thread's ids are
//! consecutive; ids given on different threads interleave.)

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The longest id taken from a request.
pub(crate) const MAX_LEN: usize = 128;

/// Hands out request ids for one worker.
#[derive(Debug)]
pub(crate) struct RequestIds {
    /// The 64 random bits of every id.
    prefix: u64,
    /// The next number no thread has taken.
    next: AtomicU64,
    /// Tells apart the `RequestIds` a thread's stash of made ids belongs to.
    serial: u64,
}

/// How many ids a thread makes at a time.
const BLOCK: usize = crate::sys::HEX_IDS_MAX;

/// Numbers the [`RequestIds`] of this process (from 1: 0 is no owner).
static SERIALS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's ids made and not yet given: its owner's serial, and the ids, last first.
    static STASH: RefCell<(u64, Vec<HeaderValue>)> = const { RefCell::new((0, Vec::new())) };
}

impl RequestIds {
    /// Ids with a fresh random prefix.
    pub(crate) fn new() -> RequestIds {
        // std's RandomState is seeded from the operating system's random source; mixing in the
        // time and the pid costs nothing and guards against a platform where it is not.
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        RequestIds::with_seed(h.finish())
    }

    fn with_seed(seed: u64) -> RequestIds {
        RequestIds {
            prefix: seed,
            next: AtomicU64::new(1),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The id of a request that came with `given` (its `x-request-id`, if any).
    pub(crate) fn for_request(&self, given: Option<&HeaderValue>) -> HeaderValue {
        match given {
            Some(v) if acceptable(v.as_bytes()) => v.clone(),
            _ => self.generate(),
        }
    }

    /// A new id: the next of this thread's stash, made [`BLOCK`] at a time.
    fn generate(&self) -> HeaderValue {
        let made = STASH.with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let (owner, ids) = &mut *s;
            if *owner != self.serial {
                ids.clear();
                *owner = self.serial;
            }
            if ids.is_empty() {
                let first = self.next.fetch_add(BLOCK as u64, Ordering::Relaxed);
                crate::sys::hex_ids(self.prefix, first, BLOCK, ids);
            }
            ids.pop()
        });
        made.unwrap_or_else(|| {
            let mut one = Vec::with_capacity(1);
            crate::sys::hex_ids(
                self.prefix,
                self.next.fetch_add(1, Ordering::Relaxed),
                1,
                &mut one,
            );
            one.pop().unwrap_or(HeaderValue::from_static("-"))
        })
    }
}

/// Whether a client's id may be used as it is (see the module doc).
pub(crate) fn acceptable(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_well_formed() {
        let ids = RequestIds::with_seed(0x0123_4567_89ab_cdef);
        assert_eq!(ids.for_request(None).as_bytes(), b"0123456789abcdef-1");
        for _ in 2..16 {
            ids.for_request(None);
        }
        let id = ids.for_request(None);
        assert_eq!(id.as_bytes(), b"0123456789abcdef-10");
        assert_eq!(id, "0123456789abcdef-10");
        // Carved from one chunk, each id keeps its own bytes; more than a chunk's worth too.
        let many: Vec<HeaderValue> = (0..500).map(|_| ids.for_request(None)).collect();
        for (i, id) in many.iter().enumerate() {
            assert_eq!(
                id.to_str().unwrap(),
                format!("0123456789abcdef-{:x}", 0x11 + i)
            );
        }
        let a = RequestIds::new().for_request(None);
        let b = RequestIds::new().for_request(None);
        assert_ne!(
            a.as_bytes(),
            b.as_bytes(),
            "two workers drew the same prefix"
        );
        assert!(acceptable(a.as_bytes()));
        let last = RequestIds::with_seed(u64::MAX);
        last.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(last.for_request(None), "ffffffffffffffff-ffffffffffffffff");
        assert_eq!(last.for_request(None), "ffffffffffffffff-0");
        // Back to the first: the thread's stash was the other's meanwhile, so the first's go on
        // from a new block (numbers skipped, never given twice): 516 ids took 9 blocks of 64.
        assert_eq!(ids.for_request(None), "0123456789abcdef-241");
    }

    #[test]
    fn a_clients_id_is_kept_only_when_bounded_and_plain() {
        let ids = RequestIds::with_seed(1);
        let uuid = HeaderValue::from_static("3f2b8c1e-7d4a-4e5f-9a0b-1c2d3e4f5a6b");
        assert_eq!(ids.for_request(Some(&uuid)).as_bytes(), uuid.as_bytes());
        for bad in [
            "".to_string(),
            "a b".into(),
            "a\"b".into(),
            "<script>".into(),
            "x".repeat(MAX_LEN + 1),
        ] {
            let v = HeaderValue::from_str(&bad).unwrap();
            let got = ids.for_request(Some(&v));
            assert!(
                got.as_bytes().starts_with(b"0000000000000001-"),
                "{bad:?} kept"
            );
        }
        let v = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert_ne!(ids.for_request(Some(&v)).as_bytes(), v.as_bytes());
        assert!(acceptable("x".repeat(MAX_LEN).as_bytes()));
    }
}
