//! Request ids: the `x-request-id` a request came with, when it is acceptable, else a new one.
//!
//! A client can send anything in a header, and the id is echoed in the response, written in the
//! access log and put in tracing spans, so one that is not 1 to [`MAX_LEN`] bytes of
//! `A-Z a-z 0-9 - _ . : + / = @` (enough for UUIDs, ULIDs, base64 and the ids of the usual
//! proxies and tracers) is not used: the request gets a new id instead, and the bad value goes
//! nowhere.
//!
//! A new id is `PPPPPPPPPPPPPPPP-NNNNNNNNNNNNNNNN`: 64 random bits in hex, drawn once per worker
//! process, and a number in hex, both of fixed width (16 digits each, 33 characters in all).
//! Unique across generations and restarts (each worker draws its own prefix; two prefixes
//! colliding is a 2^-64 chance per pair of workers), and cheap: no lock, no random draw, and no
//! formatting per request. Each thread takes numbers [`BLOCK`] at a time from the worker's
//! counter (one atomic addition per block) and makes the block's ids at once into one shared
//! buffer ([`crate::sys::IdBlock`]: one allocation per block, reference-counted from the start;
//! within a block only the last two digits change); a request's id is split off the front of
//! it (a reference count, no range checks): the [`HeaderValue`] the response carries, moved
//! there when the handler answers, its 33 bytes copied into the request's record for the access
//! log (`serve::exchange`, no second reference count). About 60 instructions
//! per id, the block's making included (BENCHMARKS (ai)). (So a
//! thread's ids are consecutive; ids given on different threads interleave, and the numbers of
//! a block a thread did not use up are never given.)

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

use crate::sys::IdBlock;

/// The longest id taken from a request.
pub(crate) const MAX_LEN: usize = 128;

/// Hands out request ids for one worker.
#[derive(Debug)]
pub(crate) struct RequestIds {
    /// The 64 random bits of every id.
    prefix: u64,
    /// The first number of the next block no thread has taken (a multiple of [`BLOCK`]).
    next: AtomicU64,
    /// Tells apart the `RequestIds` a thread's stash of made ids belongs to.
    serial: u64,
}

/// How many ids a thread makes at a time.
const BLOCK: usize = crate::sys::ID_BLOCK;

/// Numbers the [`RequestIds`] of this process (from 1: 0 is no owner).
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A thread's block of made ids: those not given yet.
struct Stash {
    /// The serial of the [`RequestIds`] the block is from (0: none).
    owner: u64,
    block: IdBlock,
}

thread_local! {
    static STASH: RefCell<Stash> = const {
        RefCell::new(Stash { owner: 0, block: IdBlock::EMPTY })
    };
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
            next: AtomicU64::new(0),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The id of a request that came with `given` (its `x-request-id`, if any).
    #[inline]
    pub(crate) fn for_request(&self, given: Option<&HeaderValue>) -> HeaderValue {
        match given {
            Some(v) if acceptable(v.as_bytes()) => v.clone(),
            _ => self.generate(),
        }
    }

    /// A new id: the next of this thread's block, made [`BLOCK`] at a time.
    fn generate(&self) -> HeaderValue {
        let made = STASH.with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            if s.owner != self.serial || s.block.is_empty() {
                s.block = self.new_block();
                s.owner = self.serial;
            }
            Some(s.block.take())
        });
        // (Only while the thread's stash is being torn down.)
        made.unwrap_or_else(|| self.new_block().take())
    }

    fn new_block(&self) -> IdBlock {
        let first = self.next.fetch_add(BLOCK as u64, Ordering::Relaxed);
        IdBlock::new(self.prefix, first)
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
        assert_eq!(
            ids.for_request(None).as_bytes(),
            b"0123456789abcdef-0000000000000000"
        );
        for _ in 1..16 {
            ids.for_request(None);
        }
        let id = ids.for_request(None);
        assert_eq!(id, "0123456789abcdef-0000000000000010");
        // Carved from one block, each id keeps its own bytes; more than a block's worth too.
        let many: Vec<HeaderValue> = (0..500).map(|_| ids.for_request(None)).collect();
        for (i, id) in many.iter().enumerate() {
            assert_eq!(
                id.to_str().unwrap(),
                format!("0123456789abcdef-{:016x}", 0x11 + i)
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
        last.next.store(u64::MAX - 63, Ordering::Relaxed);
        assert_eq!(last.for_request(None), "ffffffffffffffff-ffffffffffffffc0");
        for _ in 1..64 {
            last.for_request(None);
        }
        assert_eq!(last.for_request(None), "ffffffffffffffff-0000000000000000");
        // Back to the first: the thread's block was the other's meanwhile, so the first's go on
        // from a new block (numbers skipped, never given twice): 517 ids took 9 blocks of 64.
        assert_eq!(ids.for_request(None), "0123456789abcdef-0000000000000240");
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
