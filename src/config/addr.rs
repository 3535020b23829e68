//! Listen addresses: [`ListenAddr`] parses what a config writes under `address` (`:8199`,
//! `127.0.0.1:8200`, `[::1]:8443`, `localhost:8080`), normalizes it into a key that identifies a
//! listening socket across restarts, and tells which addresses cannot be bound together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which interfaces a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    /// `:PORT`: every interface, IPv6 and IPv4 when the system allows it.
    All,
    /// One IP address (which may itself be `0.0.0.0` or `::`).
    Ip(IpAddr),
}

/// A validated listen address.
///
/// Its [`key`](ListenAddr::key) is the normalized text (`:8199`, `127.0.0.1:8200`, `[::1]:8443`):
/// two addresses that bind the same socket have the same key (`localhost:80` and `127.0.0.1:80`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListenAddr {
    host: Host,
    port: u16,
    key: String,
}

impl ListenAddr {
    /// Parse `:PORT` (all interfaces), `IPv4:PORT`, `[IPv6]:PORT` or `localhost:PORT`
    /// (= `127.0.0.1`). Port 0 lets the system pick one. The error is a message ready for a
    /// [`super::ConfigError`].
    pub(crate) fn parse(text: &str) -> Result<ListenAddr, String> {
        let invalid = |why: &str| {
            format!(
                "invalid listen address {text:?}: {why} (expected :PORT, IPv4:PORT, [IPv6]:PORT \
                 or localhost:PORT, e.g. :8080 or 127.0.0.1:8080)"
            )
        };
        let Some(colon) = text.rfind(':') else {
            return Err(invalid("no port"));
        };
        let (host_text, port_text) = (&text[..colon], &text[colon + 1..]);
        if port_text.is_empty() {
            return Err(invalid("no port"));
        }
        if !port_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the port is not a number"));
        }
        let port: u16 = port_text
            .parse()
            .map_err(|_| invalid("the port is above 65535"))?;
        let host = if host_text.is_empty() {
            Host::All
        } else if let Some(inner) = host_text
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| invalid("not an IPv6 address between the brackets"))?;
            Host::Ip(IpAddr::V6(ip))
        } else if host_text.eq_ignore_ascii_case("localhost") {
            Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if host_text.contains(':') {
            return Err(invalid("an IPv6 address must be in brackets"));
        } else {
            return Err(invalid("the host must be an IP address or localhost"));
        };
        let key = match host {
            Host::All => format!(":{port}"),
            Host::Ip(ip) => SocketAddr::new(ip, port).to_string(),
        };
        Ok(ListenAddr { host, port, key })
    }

    /// The normalized text, identity of the listening socket: `:8199`, `127.0.0.1:8200`,
    /// `[::1]:8443`.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Whether this is the `:PORT` form (every interface, dual-stack if possible).
    pub(crate) fn is_all_interfaces(&self) -> bool {
        self.host == Host::All
    }

    /// Whether this binds every interface of some family: `:PORT`, `0.0.0.0:PORT` or `[::]:PORT`.
    pub(crate) fn is_wildcard(&self) -> bool {
        match self.host {
            Host::All => true,
            Host::Ip(ip) => ip.is_unspecified(),
        }
    }

    /// The socket address to bind. For `:PORT` this is `[::]:PORT`; the binder tries it
    /// dual-stack and falls back to `0.0.0.0:PORT`.
    pub(crate) fn socket_addrs(&self) -> SocketAddr {
        match self.host {
            Host::All => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
            Host::Ip(ip) => SocketAddr::new(ip, self.port),
        }
    }

    /// The port (0: the system picks one).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, or `None` for `:PORT`.
    #[cfg(test)]
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::All => None,
            Host::Ip(ip) => Some(ip),
        }
    }

    /// Whether this only accepts connections from the machine itself (`127.x`, `::1`).
    pub(crate) fn is_loopback(&self) -> bool {
        match self.host {
            Host::All => false,
            Host::Ip(ip) => ip.is_loopback(),
        }
    }

    /// Whether the two cannot both be bound: same port and the same IP, or same port and either
    /// one binds every interface (`:PORT`, `0.0.0.0`, `[::]`). Port 0 never conflicts.
    pub(crate) fn conflicts_with(&self, other: &ListenAddr) -> bool {
        if self.port == 0 || other.port == 0 || self.port != other.port {
            return false;
        }
        self.host == other.host || self.is_wildcard() || other.is_wildcard()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        ListenAddr::parse(s)
    }
}

/// The listener key a socket bound to `sa` serves: `:P` for the wildcard addresses, else the
/// address itself (used to match systemd-activated sockets with config addresses).
pub(crate) fn key_for(sa: std::net::SocketAddr) -> String {
    if sa.ip().is_unspecified() {
        format!(":{}", sa.port())
    } else {
        sa.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> ListenAddr {
        match ListenAddr::parse(s) {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn forms_and_keys() {
        let all = a(":8199");
        assert_eq!(all.key(), ":8199");
        assert!(all.is_all_interfaces());
        assert!(!all.is_loopback());
        assert_eq!(all.port(), 8199);
        assert_eq!(all.socket_addrs(), "[::]:8199".parse().unwrap());
        assert_eq!(all.ip(), None);

        let v4 = a("0.0.0.0:80");
        assert_eq!(v4.key(), "0.0.0.0:80");
        assert!(!v4.is_all_interfaces());
        assert!(v4.is_wildcard());
        assert_eq!(v4.socket_addrs(), "0.0.0.0:80".parse().unwrap());

        let lo = a("127.0.0.1:8200");
        assert_eq!(lo.key(), "127.0.0.1:8200");
        assert!(lo.is_loopback());

        let v6 = a("[::1]:8443");
        assert_eq!(v6.key(), "[::1]:8443");
        assert!(v6.is_loopback());
        assert_eq!(v6.socket_addrs(), "[::1]:8443".parse().unwrap());
        assert_eq!(a("[0:0:0:0:0:0:0:1]:8443").key(), "[::1]:8443");
        assert_eq!(a("[::]:80").key(), "[::]:80");
        assert!(a("[::]:80").is_wildcard());

        assert_eq!(a("localhost:8080"), a("127.0.0.1:8080"));
        assert_eq!(a("LocalHost:80").key(), "127.0.0.1:80");
        assert_eq!(a(":0").port(), 0);
        assert_eq!(a(":8080").to_string(), ":8080");
        assert_eq!(":8080".parse::<ListenAddr>(), Ok(a(":8080")));
    }

    #[test]
    fn rejects() {
        for (bad, why) in [
            ("", "no port"),
            ("8080", "no port"),
            (":", "no port"),
            (":http", "the port is not a number"),
            (":-1", "the port is not a number"),
            (":+80", "the port is not a number"),
            (":65536", "the port is above 65535"),
            (
                "example.com:80",
                "the host must be an IP address or localhost",
            ),
            ("1.2.3:80", "the host must be an IP address or localhost"),
            (" :80", "the host must be an IP address or localhost"),
            ("::1:80", "an IPv6 address must be in brackets"),
            ("[::1]", "the port is not a number"),
            ("[1.2.3.4]:80", "not an IPv6 address between the brackets"),
            ("[::1:80", "an IPv6 address must be in brackets"),
        ] {
            let err = ListenAddr::parse(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid listen address {bad:?}: {why} (expected")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn ordering_and_hash_follow_the_key() {
        use std::collections::HashSet;
        let set: HashSet<ListenAddr> = [a("localhost:80"), a("127.0.0.1:80"), a(":80")].into();
        assert_eq!(set.len(), 2);
        let mut v = [a("127.0.0.1:81"), a(":90"), a("127.0.0.1:80")];
        v.sort();
        assert_eq!(v[0].key(), ":90");
        assert_eq!(v[1].key(), "127.0.0.1:80");
    }

    #[test]
    fn conflicts() {
        let c = |x: &str, y: &str| a(x).conflicts_with(&a(y)) && a(y).conflicts_with(&a(x));
        assert!(c(":80", ":80"));
        assert!(c(":80", "127.0.0.1:80"));
        assert!(c(":80", "[::1]:80"));
        assert!(c("0.0.0.0:80", "127.0.0.1:80"));
        assert!(c("[::]:80", "10.0.0.1:80"));
        assert!(c("localhost:80", "127.0.0.1:80"));
        assert!(c("[::1]:80", "[::1]:80"));
        assert!(!c(":80", ":81"));
        assert!(!c("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!c("127.0.0.1:80", "[::1]:80"));
        assert!(!c(":0", ":0"));
        assert!(!c("127.0.0.1:0", "127.0.0.1:0"));
    }
}
