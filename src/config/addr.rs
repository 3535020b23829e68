//! Listen addresses: [`ListenAddr`] parses what a config writes under `address` (`:8199`,
//! `127.0.0.1:8200`, `[::1]:8443`, `localhost:8080`, `unix:/run/app.sock`, `systemd:web`),
//! normalizes it into a key that identifies a listening socket across restarts, and tells which
//! addresses cannot be bound together.
//!
//! Keys: a TCP address's normalized text (`:8199`, `127.0.0.1:8200`, `[::1]:8443`); a Unix
//! socket's `unix:` and its absolute path (relative paths resolve against the config's
//! directory); a systemd-activated socket taken by name, `systemd:NAME`. Keys travel between the
//! supervisor and its workers in a `KEY=FD,…` list, so a Unix path or a systemd name may not
//! contain a comma.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Which interfaces a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    /// `:PORT`: every interface, IPv6 and IPv4 when the system allows it.
    All,
    /// One IP address (which may itself be `0.0.0.0` or `::`).
    Ip(IpAddr),
}

/// What kind of socket an address names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// A TCP socket.
    Tcp { host: Host, port: u16 },
    /// A Unix-domain stream socket at this absolute path.
    Unix(PathBuf),
    /// The socket systemd activated under this name (`FileDescriptorName=`).
    Systemd(String),
}

/// A validated listen address.
///
/// Its [`key`](ListenAddr::key) is the normalized text (`:8199`, `127.0.0.1:8200`, `[::1]:8443`,
/// `unix:/run/app.sock`, `systemd:web`): two addresses that bind the same socket have the same
/// key (`localhost:80` and `127.0.0.1:80`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListenAddr {
    kind: Kind,
    key: String,
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub(crate) const UNIX_PATH_MAX: usize = 107;

const EXPECTED: &str = "expected :PORT, IPv4:PORT, [IPv6]:PORT, localhost:PORT, unix:PATH or \
                        systemd:NAME, e.g. :8080, 127.0.0.1:8080 or unix:/run/app.sock";

impl ListenAddr {
    /// Parse `:PORT` (all interfaces), `IPv4:PORT`, `[IPv6]:PORT`, `localhost:PORT`
    /// (= `127.0.0.1`), `unix:PATH` or `systemd:NAME`, a relative Unix path taken from `/`. Port
    /// 0 lets the system pick one. The error is a message ready for a [`super::ConfigError`].
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Result<ListenAddr, String> {
        ListenAddr::parse_in(text, Path::new("/"))
    }

    /// As `parse`, a relative Unix path resolved against `base_dir` (the config's directory).
    pub(crate) fn parse_in(text: &str, base_dir: &Path) -> Result<ListenAddr, String> {
        let invalid = |why: &str| format!("invalid listen address {text:?}: {why} ({EXPECTED})");
        if let Some(p) = text.strip_prefix("unix:") {
            return unix(p, base_dir).map_err(|why| invalid(&why));
        }
        if let Some(name) = text.strip_prefix("systemd:") {
            return systemd(name).map_err(|why| invalid(&why));
        }
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
        Ok(ListenAddr {
            kind: Kind::Tcp { host, port },
            key,
        })
    }

    /// The normalized text, identity of the listening socket: `:8199`, `127.0.0.1:8200`,
    /// `[::1]:8443`, `unix:/run/app.sock`, `systemd:web`.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Whether this is the `:PORT` form (every interface, dual-stack if possible).
    pub(crate) fn is_all_interfaces(&self) -> bool {
        matches!(
            self.kind,
            Kind::Tcp {
                host: Host::All,
                ..
            }
        )
    }

    /// Whether this binds every interface of some family: `:PORT`, `0.0.0.0:PORT` or `[::]:PORT`.
    pub(crate) fn is_wildcard(&self) -> bool {
        match self.kind {
            Kind::Tcp {
                host: Host::All, ..
            } => true,
            Kind::Tcp {
                host: Host::Ip(ip), ..
            } => ip.is_unspecified(),
            _ => false,
        }
    }

    /// The TCP socket address to bind (`None` for a Unix or systemd address). For `:PORT` this
    /// is `[::]:PORT`; the binder tries it dual-stack and falls back to `0.0.0.0:PORT`.
    pub(crate) fn socket_addrs(&self) -> Option<SocketAddr> {
        match self.kind {
            Kind::Tcp {
                host: Host::All,
                port,
            } => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)),
            Kind::Tcp {
                host: Host::Ip(ip),
                port,
            } => Some(SocketAddr::new(ip, port)),
            _ => None,
        }
    }

    /// The TCP port (0: the system picks one), `None` for a Unix or systemd address.
    pub(crate) fn port(&self) -> Option<u16> {
        match self.kind {
            Kind::Tcp { port, .. } => Some(port),
            _ => None,
        }
    }

    /// The path of a `unix:` address.
    pub(crate) fn unix_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Unix(p) => Some(p),
            _ => None,
        }
    }

    /// The name of a `systemd:` address.
    pub(crate) fn systemd_name(&self) -> Option<&str> {
        match &self.kind {
            Kind::Systemd(n) => Some(n),
            _ => None,
        }
    }

    /// The IP address, or `None` for `:PORT` (and for Unix and systemd addresses).
    #[cfg(test)]
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self.kind {
            Kind::Tcp {
                host: Host::Ip(ip), ..
            } => Some(ip),
            _ => None,
        }
    }

    /// Whether this only accepts connections from the machine itself (`127.x`, `::1`, a Unix
    /// socket). A `systemd:` address is not known to be (what it is bound to is seen at start).
    pub(crate) fn is_loopback(&self) -> bool {
        match self.kind {
            Kind::Tcp {
                host: Host::Ip(ip), ..
            } => ip.is_loopback(),
            Kind::Unix(_) => true,
            _ => false,
        }
    }

    /// Whether the two cannot both be bound: same port and the same IP, or same port and either
    /// one binds every interface (`:PORT`, `0.0.0.0`, `[::]`); the same Unix path; the same
    /// systemd name. Port 0 never conflicts.
    pub(crate) fn conflicts_with(&self, other: &ListenAddr) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Tcp { host: h1, port: p1 }, Kind::Tcp { host: h2, port: p2 }) => {
                if *p1 == 0 || *p2 == 0 || p1 != p2 {
                    return false;
                }
                h1 == h2 || self.is_wildcard() || other.is_wildcard()
            }
            _ => self.key == other.key,
        }
    }
}

/// `unix:PATH`: absolute (resolved against `base_dir`), short enough for a socket address, no
/// NUL, no comma (the key travels in a comma-separated list).
fn unix(p: &str, base_dir: &Path) -> Result<ListenAddr, String> {
    if p.is_empty() {
        return Err("the path is empty".into());
    }
    if p.contains(['\0', ',']) {
        return Err("a Unix socket path may not contain a comma or a NUL".into());
    }
    let path = super::values::resolve(base_dir, Path::new(p));
    let len = path.as_os_str().len();
    if len > UNIX_PATH_MAX {
        return Err(format!(
            "the path {} is {len} bytes long; a Unix socket path holds {UNIX_PATH_MAX} at most",
            path.display()
        ));
    }
    if path.file_name().is_none() {
        return Err("the path names no file".into());
    }
    let key = unix_key(&path);
    Ok(ListenAddr {
        kind: Kind::Unix(path),
        key,
    })
}

/// `systemd:NAME`: what systemd allows in `FileDescriptorName=` (1 to 255 printable ASCII
/// characters, no `:`), and no comma.
fn systemd(name: &str) -> Result<ListenAddr, String> {
    if name.is_empty() {
        return Err("the socket name is empty".into());
    }
    if name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b',')
    {
        return Err(
            "a systemd socket name is 1 to 255 printable ASCII characters without spaces, `:` or \
             `,` (the unit's FileDescriptorName=)"
                .into(),
        );
    }
    Ok(ListenAddr {
        kind: Kind::Systemd(name.to_string()),
        key: format!("systemd:{name}"),
    })
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        ListenAddr::parse_in(s, Path::new("/"))
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

/// The listener key of a Unix socket bound to `path`.
pub(crate) fn unix_key(path: &Path) -> String {
    format!("unix:{}", path.display())
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
        assert_eq!(all.port(), Some(8199));
        assert_eq!(all.socket_addrs(), Some("[::]:8199".parse().unwrap()));
        assert_eq!(all.ip(), None);

        let v4 = a("0.0.0.0:80");
        assert_eq!(v4.key(), "0.0.0.0:80");
        assert!(!v4.is_all_interfaces());
        assert!(v4.is_wildcard());
        assert_eq!(v4.socket_addrs(), Some("0.0.0.0:80".parse().unwrap()));

        let lo = a("127.0.0.1:8200");
        assert_eq!(lo.key(), "127.0.0.1:8200");
        assert!(lo.is_loopback());

        let v6 = a("[::1]:8443");
        assert_eq!(v6.key(), "[::1]:8443");
        assert!(v6.is_loopback());
        assert_eq!(v6.socket_addrs(), Some("[::1]:8443".parse().unwrap()));
        assert_eq!(a("[0:0:0:0:0:0:0:1]:8443").key(), "[::1]:8443");
        assert_eq!(a("[::]:80").key(), "[::]:80");
        assert!(a("[::]:80").is_wildcard());

        assert_eq!(a("localhost:8080"), a("127.0.0.1:8080"));
        assert_eq!(a("LocalHost:80").key(), "127.0.0.1:80");
        assert_eq!(a(":0").port(), Some(0));
        assert_eq!(a(":8080").to_string(), ":8080");
        assert_eq!(":8080".parse::<ListenAddr>(), Ok(a(":8080")));
    }

    #[test]
    fn unix_and_systemd_forms() {
        let base = Path::new("/srv/app");
        let abs = ListenAddr::parse_in("unix:/run/app.sock", base).unwrap();
        assert_eq!(abs.key(), "unix:/run/app.sock");
        assert_eq!(abs.unix_path(), Some(Path::new("/run/app.sock")));
        assert!(abs.is_loopback());
        assert_eq!(abs.port(), None);
        assert_eq!(abs.socket_addrs(), None);
        assert!(!abs.is_wildcard());
        let rel = ListenAddr::parse_in("unix:./run/../app.sock", base).unwrap();
        assert_eq!(rel.key(), "unix:/srv/app/run/../app.sock");
        let sd = a("systemd:web-1.http");
        assert_eq!(sd.key(), "systemd:web-1.http");
        assert_eq!(sd.systemd_name(), Some("web-1.http"));
        assert!(!sd.is_loopback());
        assert_eq!(sd.port(), None);
        assert!(abs.conflicts_with(&ListenAddr::parse_in("unix:/run/app.sock", base).unwrap()));
        assert!(!abs.conflicts_with(&a("unix:/run/other.sock")));
        assert!(sd.conflicts_with(&a("systemd:web-1.http")));
        assert!(!sd.conflicts_with(&a("systemd:web")));
        assert!(!abs.conflicts_with(&a(":80")) && !a(":80").conflicts_with(&sd));
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
            ("unix:", "the path is empty"),
            (
                "unix:/a,b.sock",
                "a Unix socket path may not contain a comma or a NUL",
            ),
            (
                "unix:/a\0b",
                "a Unix socket path may not contain a comma or a NUL",
            ),
            ("unix:/", "the path names no file"),
            ("systemd:", "the socket name is empty"),
            (
                "systemd:a b",
                "a systemd socket name is 1 to 255 printable ASCII characters without spaces, `:` or `,` (the unit's FileDescriptorName=)",
            ),
            (
                "systemd:a:b",
                "a systemd socket name is 1 to 255 printable ASCII characters without spaces, `:` or `,` (the unit's FileDescriptorName=)",
            ),
            (
                "systemd:a,b",
                "a systemd socket name is 1 to 255 printable ASCII characters without spaces, `:` or `,` (the unit's FileDescriptorName=)",
            ),
        ] {
            let err = ListenAddr::parse(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid listen address {bad:?}: {why} (expected")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn unix_path_length() {
        let ok = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(ListenAddr::parse(&ok).is_ok());
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        let err = ListenAddr::parse(&long).unwrap_err();
        assert!(
            err.contains("is 108 bytes long; a Unix socket path holds 107 at most"),
            "{err}"
        );
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
