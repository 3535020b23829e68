//! The supervisor's listening sockets: each open once and held here, keyed by listener key
//! (`:8199`, `unix:/run/app.sock`), for as long as its address stays in the config; every worker
//! inherits them all.
//!
//! Where they come from: systemd's socket activation at start ([`super::systemd`]), or a worker
//! that bound a new address and handed it over when it became ready. A socket systemd passed with
//! a name (`LISTEN_FDNAMES`) is also inherited under `systemd:NAME`, so a config may name it
//! either way; it is kept while either is in the config.
//!
//! Unix socket files: one a worker bound is removed here when its address leaves the config or
//! the host shuts down (never at a restart: the file, its inode and its queue carry over), and
//! when the worker that bound it fails before handing it over. A file systemd bound is systemd's
//! to remove.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::systemd;

/// The listening sockets the supervisor holds.
#[derive(Debug, Default)]
pub(crate) struct ListenerSet {
    /// By listener key.
    by_key: BTreeMap<String, OwnedFd>,
    /// `systemd:NAME` → the key of the socket systemd passed with that name.
    names: BTreeMap<String, String>,
    /// Keys of the sockets systemd passed (their files are not ours to remove).
    from_systemd: BTreeSet<String>,
}

impl ListenerSet {
    /// The sockets systemd passed, if it started us (empty otherwise).
    pub(crate) fn from_systemd() -> ListenerSet {
        let activated = systemd::activated_sockets();
        let mut set = ListenerSet::default();
        for a in activated {
            set.from_systemd.insert(a.key.clone());
            if let Some(name) = a.name {
                let alias = format!("systemd:{name}");
                if alias != a.key {
                    set.names.entry(alias).or_insert_with(|| a.key.clone());
                }
            }
            set.by_key.insert(a.key, a.fd);
        }
        set
    }

    /// Held sockets handed over by the image before a re-exec of the supervisor (see
    /// `handover`): by key, the names, and which came from systemd.
    pub(crate) fn restore(
        by_key: BTreeMap<String, OwnedFd>,
        names: BTreeMap<String, String>,
        from_systemd: BTreeSet<String>,
    ) -> ListenerSet {
        ListenerSet {
            by_key,
            names,
            from_systemd,
        }
    }

    /// The descriptor numbers by key, for a handover.
    pub(crate) fn raw_fds(&self) -> BTreeMap<String, i32> {
        use std::os::fd::AsRawFd;
        self.by_key
            .iter()
            .map(|(k, fd)| (k.clone(), fd.as_raw_fd()))
            .collect()
    }

    /// `systemd:NAME` → key, for a handover.
    pub(crate) fn names(&self) -> &BTreeMap<String, String> {
        &self.names
    }

    /// The keys systemd passed, for a handover.
    pub(crate) fn systemd_keys(&self) -> &BTreeSet<String> {
        &self.from_systemd
    }

    /// What a worker inherits: every socket under its key, and under `systemd:NAME` too.
    pub(crate) fn for_worker(&self) -> Vec<(String, &OwnedFd)> {
        let mut out: Vec<(String, &OwnedFd)> =
            self.by_key.iter().map(|(k, v)| (k.clone(), v)).collect();
        for (alias, key) in &self.names {
            if let Some(fd) = self.by_key.get(key) {
                out.push((alias.clone(), fd));
            }
        }
        out
    }

    /// A socket a ready worker bound and handed over.
    pub(crate) fn add_bound(&mut self, key: String, fd: OwnedFd) {
        self.by_key.entry(key).or_insert(fd);
    }

    /// Sockets a worker bound but never handed over (it failed first): their files go too.
    pub(crate) fn discard_unadopted(&self, bound: Vec<(String, OwnedFd)>) {
        for (key, fd) in bound {
            drop(fd);
            if !self.by_key.contains_key(&key) {
                remove_file_of(&key);
            }
        }
    }

    /// Close the sockets none of `keys` names (a socket named by its `systemd:NAME` counts).
    pub(crate) fn keep(&mut self, keys: &[String]) {
        let keep: BTreeSet<&str> = keys
            .iter()
            .map(|k| self.names.get(k).unwrap_or(k).as_str())
            .collect();
        let gone: Vec<String> = self
            .by_key
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            tracing::info!("listener [{k}] left the config; closing it");
            self.close(&k);
        }
    }

    /// Close every socket (the host is shutting down).
    pub(crate) fn close_all(&mut self) {
        if !self.by_key.is_empty() {
            tracing::info!("closing the listening sockets: new connections are refused");
        }
        let keys: Vec<String> = self.by_key.keys().cloned().collect();
        for k in keys {
            self.close(&k);
        }
    }

    /// The keys held (for the status).
    pub(crate) fn keys(&self) -> Vec<String> {
        self.by_key.keys().cloned().collect()
    }

    fn close(&mut self, key: &str) {
        self.by_key.remove(key);
        self.names.retain(|_, k| k != key);
        if !self.from_systemd.remove(key) {
            remove_file_of(key);
        }
    }
}

/// Remove the socket file of a `unix:` key (if it still is a socket).
fn remove_file_of(key: &str) {
    let Some(path) = key.strip_prefix("unix:").map(Path::new) else {
        return;
    };
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!("removed the socket file {}", path.display()),
            Err(e) => tracing::warn!("cannot remove the socket file {}: {e}", path.display()),
        },
        _ => {}
    }
}
