//! [`Cur`], the writer a line is formatted with, and what it writes from: [`Padded`] texts,
//! the number tables, the table of bytes written as they are.

use super::{Buf, MAX_LINE, SLACK};

/// Writes into a [`Buf`]. A local value whose methods are inlined, so its position stays in a
/// register while a line is written.
///
/// The budgets keep a line within [`MAX_LINE`] (see the module doc), so the position is always
/// below it; the fixed-size writes take it modulo [`MAX_LINE`] (one `and`), which lets the
/// compiler see that a write of at most [`SLACK`] bytes from there stays within the
/// [`super::WINDOW`]:
/// no bounds check, and no panic path. (Were a budget wrong, a line would come out garbled, never
/// out of bounds; debug builds assert the position.) Writes of a length known only at run time
/// ([`Cur::put`]) are checked.
pub(super) struct Cur<'a> {
    pub(super) b: &'a mut Buf,
    pub(super) n: usize,
}

impl Cur<'_> {
    /// The position, known to the compiler to be below [`MAX_LINE`].
    #[inline(always)]
    pub(super) fn at(&self) -> usize {
        debug_assert!(self.n < MAX_LINE, "{}", self.n);
        self.n & (MAX_LINE - 1)
    }

    /// Append the first `len` bytes of `s`, copying all of `s` (a fixed size: a few moves, no
    /// library call, no bounds check): the bytes past `len` are padding, overwritten by what
    /// follows. Returns the bytes written, for a caller to fill in a field.
    #[inline(always)]
    pub(super) fn fixed<const N: usize>(&mut self, s: &[u8; N], len: usize) -> &mut [u8; N] {
        const { assert!(N <= SLACK) };
        debug_assert!(len <= N);
        let at = self.at();
        self.n = at + len;
        let w: &mut [u8; N] = (&mut self.b[at..at + N]).try_into().unwrap();
        *w = *s;
        w
    }

    /// Append all of `s`, a constant.
    #[inline(always)]
    pub(super) fn lit<const N: usize>(&mut self, s: &[u8; N]) {
        self.fixed(s, N);
    }

    #[inline(always)]
    pub(super) fn push(&mut self, b: u8) {
        let at = self.at();
        self.b[at] = b;
        self.n = at + 1;
    }

    /// Append `s`, of any length (checked).
    #[inline(always)]
    pub(super) fn put(&mut self, s: &[u8]) {
        let end = self.n + s.len();
        self.b[self.n..end].copy_from_slice(s);
        self.n = end;
    }

    /// Run `f`, a rare case's writing, out of line, on a copy of this writer: the writer itself
    /// is never passed to a call, so its position stays in a register.
    #[inline(always)]
    pub(super) fn out_of_line(&mut self, f: impl FnOnce(&mut Cur<'_>)) {
        #[inline(never)]
        fn call(b: &mut Buf, n: usize, f: impl FnOnce(&mut Cur<'_>)) -> usize {
            let mut out = Cur { b, n };
            f(&mut out);
            out.n
        }
        self.n = call(self.b, self.n, f);
    }

    /// Append `v` if it is within `budget` and every byte of it is written as it is in both
    /// formats (see [`PLAIN`]); returns whether it did. A short value (below 8 bytes: a path like
    /// `/`) is checked and copied in one pass, byte by byte (no library call); a longer one is
    /// scanned by [`all_plain`], then copied.
    #[inline(always)]
    pub(super) fn put_plain(&mut self, v: &[u8], budget: usize) -> bool {
        if v.len() < 8 && v.len() <= budget {
            let at = self.at();
            let w = &mut self.b[at..at + 8];
            for (d, &b) in w.iter_mut().zip(v) {
                if !PLAIN[usize::from(b)] {
                    return false; // (what was copied is overwritten by what follows)
                }
                *d = b;
            }
            self.n = at + v.len();
            true
        } else if v.len() <= budget && all_plain(v) {
            self.put(v);
            true
        } else {
            false
        }
    }
}

/// Append `n` in decimal: below 1000 (the usual body sizes and durations in ms) one 4-byte copy
/// from [`DECIMAL`], more with `itoa`.
#[inline(always)]
pub(super) fn num(out: &mut Cur<'_>, n: u64) {
    if n < 1000 {
        let e = &DECIMAL[n as usize];
        out.fixed(e, usize::from(e[3]));
    } else {
        out.out_of_line(move |o| num_long(o, n));
    }
}

fn num_long(out: &mut Cur<'_>, n: u64) {
    out.put(itoa::Buffer::new().format(n).as_bytes());
}

/// Each number below 1024 (past 999, its last three digits): its decimal digits, left-aligned and
/// padded with `0`, and their count in the last byte.
pub(super) static DECIMAL: [[u8; 4]; 1024] = {
    let mut t = [[b'0'; 4]; 1024];
    let mut i = 0;
    while i < 1024 {
        let n = i % 1000;
        let d = [
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        t[i] = if n >= 100 {
            [d[0], d[1], d[2], 3]
        } else if n >= 10 {
            [d[1], d[2], b'0', 2]
        } else {
            [d[2], b'0', b'0', 1]
        };
        i += 1;
    }
    t
};

/// Each number below 1024 (past 999, its last three digits) as a fraction's `.` and three
/// digits: `.000` to `.999`.
pub(super) static FRACTION: [[u8; 4]; 1024] = {
    let mut t = [[0; 4]; 1024];
    let mut i = 0;
    while i < 1024 {
        let n = i % 1000;
        t[i] = [
            b'.',
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        i += 1;
    }
    t
};

/// A text padded to `N` bytes, for [`Cur::fixed`].
#[derive(Debug)]
pub(crate) struct Padded<const N: usize> {
    pub(super) bytes: [u8; N],
    pub(super) len: usize,
}

impl<const N: usize> Padded<N> {
    /// `s` (at most `N` bytes), padded with spaces.
    pub(super) const fn new(s: &[u8]) -> Padded<N> {
        assert!(s.len() <= N);
        let mut bytes = [b' '; N];
        let mut i = 0;
        while i < s.len() {
            bytes[i] = s[i];
            i += 1;
        }
        Padded {
            bytes,
            len: s.len(),
        }
    }
}

impl Cur<'_> {
    #[inline(always)]
    pub(super) fn padded<const N: usize>(&mut self, p: &Padded<N>) {
        self.fixed(&p.bytes, p.len);
    }
}

/// Whether every byte of `v` is written as it is in both formats (see [`PLAIN`]). Without an
/// early exit, so the scan of a long value (a user agent) runs 16 bytes a step.
#[inline(always)]
pub(super) fn all_plain(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

/// The bytes written as they are in both formats: printable ASCII but `"` and `\\` (one table
/// load per byte in the scan of a value).
pub(super) static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};
