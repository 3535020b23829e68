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
//! and cheap: one atomic increment and a few bytes of formatting per request, no lock and no
//! random draw.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

use crate::serve::exchange::RequestId;

/// The longest id taken from a request.
pub(crate) const MAX_LEN: usize = 128;

/// Hands out request ids for one worker.
#[derive(Debug)]
pub(crate) struct RequestIds {
    /// `PPPPPPPPPPPPPPPP-`.
    prefix: [u8; 17],
    next: AtomicU64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

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
        let mut prefix = [b'-'; 17];
        for (i, b) in prefix[..16].iter_mut().enumerate() {
            *b = HEX[((seed >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The id of a request that came with `given` (its `x-request-id`, if any).
    pub(crate) fn for_request(&self, given: Option<&HeaderValue>) -> RequestId {
        match given {
            Some(v) if acceptable(v.as_bytes()) => RequestId::Given(v.clone()),
            _ => self.generate(),
        }
    }

    /// A new id (17 + at most 16 bytes: within [`RequestId::MADE_MAX`]).
    fn generate(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; RequestId::MADE_MAX];
        buf[..17].copy_from_slice(&self.prefix);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        RequestId::Made {
            buf,
            len: (17 + digits) as u8,
        }
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
        assert_eq!(id.header().unwrap(), "0123456789abcdef-10");
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
        assert_eq!(last.for_request(None).as_bytes().len(), 33);
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
