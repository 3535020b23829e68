//! The little form handling the admin routes need: `application/x-www-form-urlencoded` query
//! strings and request bodies, read with a size limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

/// Largest request body read (a form with one path in it is far smaller).
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// Why a form could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the form data")]
    BadEscape,
    /// The decoded text is not UTF-8.
    #[error("the form data is not UTF-8")]
    NotUtf8,
    /// More than [`MAX_BODY`] bytes.
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The connection failed while the body was read.
    #[error("cannot read the request body: {0}")]
    Read(String),
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode one urlencoded component: `+` is a space, `%XX` a byte.
fn decode(s: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex);
                let lo = s.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::BadEscape);
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

/// Parse `a=1&b=two+words&c` into `[("a","1"), ("b","two words"), ("c","")]`.
pub(crate) fn parse(data: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    data.split(|&b| b == b'&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = match kv.iter().position(|&b| b == b'=') {
                Some(i) => (&kv[..i], &kv[i + 1..]),
                None => (kv, &b""[..]),
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The last value of `key` in parsed pairs.
pub(crate) fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Read a whole request body, refusing more than [`MAX_BODY`] bytes.
pub(crate) async fn read_body<B>(body: B) -> Result<Bytes, FormError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FormError::TooLarge),
        Err(e) => Err(FormError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_urlencoded_forms() {
        assert_eq!(parse(b"").unwrap(), pairs(&[]));
        assert_eq!(
            parse(b"a=1&b=two+words&c&&d=%2Fusr%2fbin%2Fx%20y").unwrap(),
            pairs(&[
                ("a", "1"),
                ("b", "two words"),
                ("c", ""),
                ("d", "/usr/bin/x y")
            ])
        );
        assert_eq!(
            parse(b"newExeFilePath=%C3%A9t%C3%A9=x").unwrap(),
            pairs(&[("newExeFilePath", "été=x")])
        );
        let p = parse(b"k=1&k=2").unwrap();
        assert_eq!(get(&p, "k"), Some("2"));
        assert_eq!(get(&p, "x"), None);
    }

    #[test]
    fn rejects_bad_escapes_and_non_utf8() {
        assert_eq!(parse(b"a=%"), Err(FormError::BadEscape));
        assert_eq!(parse(b"a=%4"), Err(FormError::BadEscape));
        assert_eq!(parse(b"a=%zz"), Err(FormError::BadEscape));
        assert_eq!(parse(b"a=%ff"), Err(FormError::NotUtf8));
    }

    #[tokio::test]
    async fn body_size_is_limited() {
        let small = http_body_util::Full::new(Bytes::from_static(b"a=1"));
        assert_eq!(read_body(small).await.unwrap(), "a=1");
        let big = http_body_util::Full::new(Bytes::from(vec![b'a'; MAX_BODY + 1]));
        assert_eq!(read_body(big).await, Err(FormError::TooLarge));
    }
}
