//! FNV-1a (64-bit), the one hash apphost writes itself: small, fast on short keys, and stable
//! across builds and versions (unlike `DefaultHasher`). The control socket's derived name uses it
//! (the CLI and the supervisor may be different binaries after an upgrade), and so does the
//! route table's path map (its keys come from the config, so SipHash's defence against chosen
//! keys buys nothing there, and it costs more per request).

use std::hash::Hasher;

/// The FNV-1a hasher (64-bit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    #[inline]
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The FNV-1a hash of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.write(bytes);
    h.finish()
}
