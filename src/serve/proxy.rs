//! The PROXY protocol (HAProxy's, versions 1 and 2): on a server with `proxy_protocol: true`,
//! every connection starts with a header from the proxy in front naming the client it relays.
//!
//! Framing is ours, parsing is the `ppp` crate's. The header is read exactly, never a byte
//! beyond it, so what follows (a TLS handshake, or the first request, which `conn` peeks at to
//! choose the HTTP version) is left in the socket untouched:
//! - the first 12 bytes tell the versions apart: v2's binary signature, or v1's `PROXY `;
//!   anything else is not a PROXY header, and the connection is closed;
//! - v2: 4 more bytes give the length of the rest, which is read exactly; a header longer than
//!   [`MAX_HEADER`] is refused (TLVs included; the ones HAProxy and cloud balancers send are far
//!   shorter);
//! - v1: ends with CRLF within 107 bytes (the specification's bound). The bytes in the socket
//!   are peeked; if they hold the CRLF, the header is read up to it; if not, what was peeked is
//!   consumed (all of it is header) and the next peek waits for more, so a header sent a byte at
//!   a time is neither spun on nor over-read.
//!
//! How long all this may take is not this module's business: the connection's header deadline
//! (`header_read_timeout`, enforced by the watchdog from the accept on) covers the PROXY header
//! as it covers a TLS handshake, so a header that never finishes is cut with its connection.
//!
//! What the header says: the source address of a relayed TCP connection (v1 `TCP4`/`TCP6`, v2
//! `PROXY` over IPv4/IPv6) becomes the client's address. v1 `UNKNOWN`, a v2 `LOCAL` command (the
//! proxy's own health check), and v2 unspecified or Unix-socket addresses name no IP client:
//! the connection's own peer is used.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest PROXY v2 header accepted, the fixed 16 bytes included.
pub(crate) const MAX_HEADER: usize = 4096;
/// The longest v1 header (the specification's bound, CRLF included).
const V1_MAX: usize = 107;
/// The start of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whom the header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A relayed client at this address.
    Client(SocketAddr),
    /// No IP client (v1 `UNKNOWN`, v2 `LOCAL`, unspecified or Unix addresses): the connection
    /// stands for itself.
    Own,
}

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The connection closed before a whole header.
    #[error("the connection closed before a whole PROXY header")]
    Closed,
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header (proxy_protocol is on for this server)")]
    Missing,
    /// Longer than allowed.
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    /// Not a valid header.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// What a stream offers besides reading: a look at the bytes waiting, without taking them.
pub(crate) trait Peek {
    /// Copy the bytes waiting in the socket into `buf` without consuming them; waits for at
    /// least one (0: the peer closed).
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a;
}

impl Peek for tokio::net::TcpStream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        tokio::net::TcpStream::peek(self, buf)
    }
}

impl Peek for tokio::net::UnixStream {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let this: &Self = self;
        loop {
            this.readable().await?;
            let r = this.try_io(tokio::io::Interest::READABLE, || {
                rustix::net::recv(this, &mut *buf, rustix::net::RecvFlags::PEEK)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// Read one PROXY header (v1 or v2) from the start of `s`, exactly, and say whom it names.
pub(crate) async fn read_header<S>(s: &mut S) -> Result<Source, ProxyError>
where
    S: AsyncRead + Peek + Unpin,
{
    let mut start = [0u8; 12];
    read_exact(s, &mut start).await?;
    if &start == V2_SIGNATURE {
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(&start);
        read_exact(s, &mut fixed[12..]).await?;
        let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if len > MAX_HEADER {
            return Err(ProxyError::TooLong(MAX_HEADER));
        }
        let mut header = vec![0u8; len];
        header[..16].copy_from_slice(&fixed);
        read_exact(s, &mut header[16..]).await?;
        parse_v2(&header)
    } else if start.starts_with(b"PROXY ") {
        let mut buf = [0u8; V1_MAX];
        buf[..12].copy_from_slice(&start);
        let mut have = 12;
        loop {
            let n = s.peek(&mut buf[have..]).await?;
            if n == 0 {
                return Err(ProxyError::Closed);
            }
            // A CR already taken may wait for its LF in the new bytes.
            let from = have - 1;
            if let Some(i) = buf[from..have + n].windows(2).position(|w| w == b"\r\n") {
                let end = from + i + 2;
                read_exact(s, &mut buf[have..end]).await?;
                return parse_v1(&buf[..end]);
            }
            read_exact(s, &mut buf[have..have + n]).await?;
            have += n;
            if have == V1_MAX {
                return Err(ProxyError::TooLong(V1_MAX));
            }
        }
    } else {
        Err(ProxyError::Missing)
    }
}

async fn read_exact<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), ProxyError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(e) => Err(ProxyError::Io(e)),
    }
}

/// A whole v1 header, CRLF included.
fn parse_v1(header: &[u8]) -> Result<Source, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let h = Header::try_from(header).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    // ppp stops at the first CR: a header whose first CR is not the end is refused.
    if h.header.len() != header.len() {
        return Err(ProxyError::Invalid(
            "a CR before the end of the line".into(),
        ));
    }
    Ok(match h.addresses {
        Addresses::Tcp4(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => Source::Own,
    })
}

/// A whole v2 header.
fn parse_v2(header: &[u8]) -> Result<Source, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let h = Header::try_from(header).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if h.command == Command::Local {
        return Ok(Source::Own);
    }
    Ok(match h.addresses {
        Addresses::IPv4(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => Source::Own,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Write `bytes` then `rest` into a real socket pair, read the header, and return what it
    /// said and what was left unread.
    async fn read(bytes: &[u8]) -> (Result<Source, ProxyError>, Vec<u8>) {
        let (mut client, mut server) = tokio::net::UnixStream::pair().unwrap();
        let mut sent = bytes.to_vec();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let r = read_header(&mut server).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (r, rest)
    }

    fn v2(command: u8, family: u8, addrs: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addrs.len() + extra.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(extra);
        h
    }

    fn ipv4_addrs() -> Vec<u8> {
        let mut a = vec![203, 0, 113, 7, 192, 0, 2, 1];
        a.extend_from_slice(&5000u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    #[tokio::test]
    async fn v1_headers_name_the_client_and_leave_the_request() {
        for (h, want) in [
            (
                &b"PROXY TCP4 203.0.113.7 192.0.2.1 5000 443\r\n"[..],
                Source::Client("203.0.113.7:5000".parse().unwrap()),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 5000 443\r\n",
                Source::Client("[2001:db8::7]:5000".parse().unwrap()),
            ),
            (b"PROXY UNKNOWN\r\n", Source::Own),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                Source::Own,
            ),
        ] {
            let (r, rest) = read(h).await;
            assert_eq!(r.unwrap(), want, "{:?}", String::from_utf8_lossy(h));
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn v2_headers_name_the_client_and_leave_the_request() {
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&5000u16.to_be_bytes());
        v6.extend_from_slice(&443u16.to_be_bytes());
        // A NOOP TLV after the addresses is read and skipped.
        let tlv = [0x04, 0x00, 0x02, 0xaa, 0xbb];
        for (h, want) in [
            (
                v2(1, 0x11, &ipv4_addrs(), &[]),
                Source::Client("203.0.113.7:5000".parse().unwrap()),
            ),
            (
                v2(1, 0x11, &ipv4_addrs(), &tlv),
                Source::Client("203.0.113.7:5000".parse().unwrap()),
            ),
            (
                v2(1, 0x21, &v6, &[]),
                Source::Client("[2001:db8::7]:5000".parse().unwrap()),
            ),
            // LOCAL: the proxy speaking for itself, addresses (if any) ignored.
            (v2(0, 0x00, &[], &[]), Source::Own),
            (v2(0, 0x11, &ipv4_addrs(), &[]), Source::Own),
            (v2(1, 0x00, &[], &[]), Source::Own),
            (v2(1, 0x31, &[0; 216], &[]), Source::Own),
        ] {
            let (r, rest) = read(&h).await;
            assert_eq!(r.unwrap(), want, "{h:?}");
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn a_v1_header_arriving_a_byte_at_a_time_is_read_exactly() {
        let (mut client, mut server) = tokio::net::UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let r = read_header(&mut server).await;
            let mut rest = [0u8; 3];
            server.read_exact(&mut rest).await.unwrap();
            (r.unwrap(), rest)
        });
        for b in b"PROXY TCP4 203.0.113.7 192.0.2.1 5000 443\r\nGET" {
            client.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (source, rest) = reader.await.unwrap();
        assert_eq!(source, Source::Client("203.0.113.7:5000".parse().unwrap()));
        assert_eq!(&rest, b"GET");
    }

    /// Malformed headers: each is refused with the error it names.
    #[tokio::test]
    async fn malformed_headers_are_refused() {
        let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let mut bad_version = v2(1, 0x11, &ipv4_addrs(), &[]);
        bad_version[12] = 0x11;
        let mut bad_command = v2(1, 0x11, &ipv4_addrs(), &[]);
        bad_command[12] = 0x2f;
        let mut bad_family = v2(1, 0x11, &ipv4_addrs(), &[]);
        bad_family[13] = 0x41;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "no PROXY"),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00".to_vec(),
                "no PROXY",
            ),
            (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "no PROXY"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(), "closed"),
            (long_v1.into_bytes(), "longer than 107"),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
            (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n".to_vec(),
                "invalid",
            ),
            (b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(), "invalid"),
            (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(), "invalid"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(), "invalid"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(), "invalid"),
            (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n".to_vec(), "invalid"),
            (
                b"PROXY \xff\xfe 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                "invalid",
            ),
            (b"PROXY TCP4 1.2.3.4 5".to_vec(), "closed"),
            (V2_SIGNATURE[..8].to_vec(), "closed"),
            (bad_version, "invalid"),
            (bad_command, "invalid"),
            (bad_family, "invalid"),
            // Addresses shorter than the family needs.
            (v2(1, 0x11, &[1, 2, 3, 4], &[]), "invalid"),
            (v2(1, 0x21, &ipv4_addrs(), &[]), "invalid"),
            (v2(1, 0x11, &vec![0; MAX_HEADER], &[]), "longer than 4096"),
        ];
        for (h, want) in cases {
            // Sent without a request after it where the request would make it valid or long.
            let (mut client, mut server) = tokio::net::UnixStream::pair().unwrap();
            client.write_all(&h).await.unwrap();
            client.shutdown().await.unwrap();
            let err = read_header(&mut server).await.unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err} (wanted {want:?})",
                String::from_utf8_lossy(&h)
            );
        }
    }
}
