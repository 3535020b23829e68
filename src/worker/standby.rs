//! The warm standby's head start: what it can do before it is activated without serving anything
//! stale. It reads and parses the config ahead ([`EarlyConfig`]); at activation it reads the file
//! again and keeps that parse only if the file holds the same bytes, else the config is parsed
//! anew: the config served is always the file as it is at the activation.
//!
//! It also runs one request through its serving code ([`warm_up`]), over a loopback connection
//! to a throwaway listener, so that the first real connection after the activation does not pay
//! for mapping that code into a fresh process.
//!
//! Its log subscriber is built ahead from that parse, and installed at the activation only if
//! the `log` section it was built from is the one of the config served.
//!
//! Nothing else is done ahead: the routes (whose handlers' factories may read files, such as a
//! static directory behind a symlink a deploy has just switched), the TLS certificates, the
//! access log files and the application's start-up checks are all made or run after the
//! activation, as by a freshly started worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::serve::{self, Endpoint, Serving};

/// Send one request through the serving code, to an empty route table (a 404 nobody sees), then
/// drain that throwaway state. In a fresh process the first request takes its code's page faults
/// (a fraction of a millisecond here, up to a millisecond on a busy machine); done before the
/// activation, they are off the handoff's path. The request goes over a real loopback connection
/// to a throwaway listener, through the accept loop, so the accept path and the socket I/O are
/// warm too; where no loopback socket can be had, over an in-memory connection.
pub(super) async fn warm_up() {
    let s = Duration::from_secs(5);
    let limits = serve::watchdog::Limits::all(s);
    let serving = Serving::new(limits, 1, None);
    let endpoint = Endpoint {
        key: "warm-up".into(),
        routes: Arc::new(crate::routes::RouteTable::new()),
        tls: None,
        observer: None,
        proxy_protocol: false,
        limit: None,
    };
    if over_loopback(endpoint.clone(), &serving, s).await.is_err() {
        // A 404 is the expected answer.
        let _ = serve::probe::probe(Arc::new(endpoint), serving.clone(), "/", s).await;
    }
    serving.start_drain();
}

/// One `GET /` through an accept loop on a throwaway 127.0.0.1 listener; the loop ends with it.
async fn over_loopback(
    endpoint: Endpoint,
    serving: &Arc<Serving>,
    within: Duration,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let addr = l.local_addr()?;
    let listener = serve::listen::adopt(std::os::fd::OwnedFd::from(l))?.into_tokio()?;
    let accepting = tokio::spawn(serve::accept_loop(listener, endpoint, serving.clone()));
    let ask = async {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: warm-up\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answered = tokio::time::timeout(within, ask).await;
    // The loop stops and drops the listener.
    serving.start_drain();
    let _ = accepting.await;
    match answered {
        Ok(Ok(a)) if a.starts_with(b"HTTP/1.1 ") => Ok(()),
        Ok(Err(e)) => Err(e),
        _ => Err(std::io::Error::other("no answer")),
    }
}

/// A config parsed ahead of the activation, with the bytes it was parsed from.
pub(super) struct EarlyConfig {
    /// The file; `None`: the embedded default (it cannot change).
    path: Option<PathBuf>,
    text: Vec<u8>,
    config: Config,
}

impl EarlyConfig {
    /// Parse the config now. `None` when it cannot be read or parsed (the activation then
    /// reads it again and reports what is wrong), or when it changed while it was parsed.
    pub(super) fn read(path: Option<&Path>) -> Option<EarlyConfig> {
        let Some(path) = path else {
            let config = Config::embedded().ok()?;
            return Some(EarlyConfig {
                path: None,
                text: Vec::new(),
                config,
            });
        };
        let before = std::fs::read(path).ok()?;
        let config = Config::load(path).ok()?;
        // The bytes compared at the activation must be the bytes parsed.
        let after = std::fs::read(path).ok()?;
        (before == after).then(|| EarlyConfig {
            path: Some(path.to_path_buf()),
            text: after,
            config,
        })
    }

    /// The log section of the config parsed ahead (the standby builds its subscriber from it).
    pub(super) fn log(&self) -> &crate::config::LogConfig {
        &self.config.log
    }

    /// The config parsed ahead, if the file still holds the bytes it was parsed from.
    pub(super) fn if_unchanged(self) -> Option<Config> {
        match &self.path {
            None => Some(self.config),
            Some(p) => (std::fs::read(p).ok()? == self.text).then_some(self.config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str =
        "servers:\n  s:\n    address: \"127.0.0.1:1\"\n    routes:\n      \"/\": pid\n";
    const TWO: &str =
        "servers:\n  s:\n    address: \"127.0.0.1:2\"\n    routes:\n      \"/\": pid\n";

    fn address(c: &Config) -> String {
        c.servers[0].http[0].key().to_string()
    }

    #[test]
    fn the_early_parse_is_kept_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.yaml");
        std::fs::write(&path, ONE).unwrap();
        let early = EarlyConfig::read(Some(&path)).unwrap();
        assert_eq!(address(&early.if_unchanged().unwrap()), "127.0.0.1:1");
        let early = EarlyConfig::read(Some(&path)).unwrap();
        std::fs::write(&path, TWO).unwrap();
        assert!(
            early.if_unchanged().is_none(),
            "a changed file is parsed again"
        );
        let early = EarlyConfig::read(Some(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            early.if_unchanged().is_none(),
            "a removed file is not served from memory"
        );
    }

    #[test]
    fn a_config_that_does_not_parse_is_left_for_the_activation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.yaml");
        std::fs::write(&path, "servers: [").unwrap();
        assert!(EarlyConfig::read(Some(&path)).is_none());
        assert!(EarlyConfig::read(Some(&dir.path().join("missing.yaml"))).is_none());
    }
}
