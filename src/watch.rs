//! Watching files so apphost restarts (or reloads a certificate) by itself.
//!
//! - The **executable** path recorded at start (see `cli`), and the **config** file: the
//!   supervisor watches their directories (inotify through `notify`; nothing polls, so an idle
//!   watch costs no CPU). A change is acted on once the file has been quiet for `watch.settle`,
//!   and only if its identity (device, inode, size, mtime) differs from the last one seen, so a
//!   half-written file is never run and a burst of saves (editors that write by rename, `cp`
//!   then `mv`) gives one restart. The candidate is then checked: the executable checks of
//!   `supervisor::exe`, and a preflight run `EXE check [-c CONFIG]` that must exit 0 within
//!   [`PREFLIGHT_TIMEOUT`]. Only then is a restart asked for, through the same state machine as
//!   every other trigger. A file that fails is refused with the reason in the log; the serving
//!   generation is untouched and the next change is still picked up.
//! - **Certificates**: each worker watches its cert and key files and, when they change and the
//!   new pair loads and matches, swaps it in for new TLS handshakes without a restart; a broken
//!   pair is logged and the old one stays.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long a preflight `check` may take.
pub(crate) const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);

/// What makes a file "the same file": if none of these changed, nothing happened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    /// Its device and inode (the file, whatever its size and times).
    pub(crate) fn dev_ino(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// The identity of the file at `path` now (following symlinks), `None` if it does not exist.
pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// A set of watched files. Dropping it stops the watch.
///
/// Their directories are watched, not the files: a rename over a file, a delete-and-create, or a
/// symlink swap next to it (Kubernetes ConfigMap and secret volumes, whose `..data` link is
/// replaced) are all seen. For a path that is a symlink, the directory of the file it resolves
/// to is watched as well (and again after each change, as the target moves), so an edit of the
/// target by rename in its own directory is seen too. Paths are kept as given, never resolved
/// once and for all. Any event in those directories makes the set compare the files'
/// identities (through their links); only files whose identity changed are reported.
pub(crate) struct FileWatch {
    watcher: notify::RecommendedWatcher,
    /// The directories watched so far.
    dirs: HashSet<PathBuf>,
    rx: mpsc::UnboundedReceiver<()>,
    ids: HashMap<PathBuf, Option<FileId>>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("files", &self.ids.keys())
            .finish()
    }
}

impl FileWatch {
    /// Watch `files`, taking their identities now as the baseline.
    pub(crate) fn new(files: &[PathBuf]) -> notify::Result<FileWatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && !matches!(ev.kind, notify::EventKind::Access(_))
                {
                    let _ = tx.send(());
                }
            })?;
        let mut dirs = HashSet::new();
        for d in files.iter().filter_map(|f| f.parent()) {
            if dirs.insert(d.to_path_buf()) {
                watcher.watch(d, RecursiveMode::NonRecursive)?;
            }
        }
        let ids = files.iter().map(|f| (f.clone(), file_id(f))).collect();
        let mut w = FileWatch {
            watcher,
            dirs,
            rx,
            ids,
        };
        w.watch_targets();
        Ok(w)
    }

    /// Also watch the directory each file resolves to now, if it is not watched yet (best
    /// effort: the directory of the path as given is what must be watched).
    fn watch_targets(&mut self) {
        let targets: Vec<PathBuf> = self
            .ids
            .keys()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .filter_map(|t| t.parent().map(Path::to_path_buf))
            .collect();
        for d in targets {
            if !self.dirs.contains(&d)
                && self.watcher.watch(&d, RecursiveMode::NonRecursive).is_ok()
            {
                self.dirs.insert(d);
            }
        }
    }

    /// Wait until some watched file's identity changes and then stays unchanged for `settle`;
    /// returns the files that changed (a missing file counts as changed only once it is back).
    /// `None` when the watch has ended.
    pub(crate) async fn next_settled(&mut self, settle: Duration) -> Option<HashSet<PathBuf>> {
        loop {
            self.rx.recv().await?;
            // Quiet period: every further event restarts it.
            loop {
                match tokio::time::timeout(settle, self.rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return None,
                    Err(_quiet) => break,
                }
            }
            self.watch_targets();
            let mut changed = HashSet::new();
            for (path, last) in self.ids.iter_mut() {
                let now = file_id(path);
                if now.is_some() && now != *last {
                    changed.insert(path.clone());
                }
                if now.is_some() {
                    *last = now;
                }
            }
            if !changed.is_empty() {
                return Some(changed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_and_a_rename_over_settle_into_one_change() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("server.yaml");
        std::fs::write(&f, "a").unwrap();
        let before = file_id(&f).unwrap();
        let mut w = FileWatch::new(std::slice::from_ref(&f)).unwrap();
        for i in 0..5 {
            std::fs::write(&f, format!("write {i}")).unwrap();
        }
        let tmp = d.path().join(".server.yaml.tmp");
        std::fs::write(&tmp, "final").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        let changed = tokio::time::timeout(
            Duration::from_secs(5),
            w.next_settled(Duration::from_millis(200)),
        )
        .await
        .expect("a change is reported")
        .unwrap();
        assert_eq!(changed, HashSet::from([f.clone()]));
        assert_ne!(file_id(&f).unwrap(), before);
        // Nothing more is pending: the burst was one change.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(300),
                w.next_settled(Duration::from_millis(50))
            )
            .await
            .is_err()
        );
    }

    async fn settled(w: &mut FileWatch) -> HashSet<PathBuf> {
        tokio::time::timeout(
            Duration::from_secs(5),
            w.next_settled(Duration::from_millis(100)),
        )
        .await
        .expect("a change is reported")
        .unwrap()
    }

    #[tokio::test]
    async fn a_link_is_followed_to_its_target_and_its_swap_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let (links, a, b) = (d.path().join("etc"), d.path().join("a"), d.path().join("b"));
        for dir in [&links, &a, &b] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(a.join("server.yaml"), "a").unwrap();
        std::fs::write(b.join("server.yaml"), "b").unwrap();
        let link = links.join("server.yaml");
        std::os::unix::fs::symlink(a.join("server.yaml"), &link).unwrap();
        let mut w = FileWatch::new(std::slice::from_ref(&link)).unwrap();
        // The target edited by rename in its own directory, where nothing names the link.
        let tmp = a.join(".server.yaml.tmp");
        std::fs::write(&tmp, "a2").unwrap();
        std::fs::rename(&tmp, a.join("server.yaml")).unwrap();
        assert_eq!(settled(&mut w).await, HashSet::from([link.clone()]));
        // The link switched to another directory (a new link renamed over it).
        let new = links.join(".server.yaml.new");
        std::os::unix::fs::symlink(b.join("server.yaml"), &new).unwrap();
        std::fs::rename(&new, &link).unwrap();
        assert_eq!(settled(&mut w).await, HashSet::from([link.clone()]));
        // Then the new target's own directory is watched too.
        let tmp = b.join(".server.yaml.tmp");
        std::fs::write(&tmp, "b2").unwrap();
        std::fs::rename(&tmp, b.join("server.yaml")).unwrap();
        assert_eq!(settled(&mut w).await, HashSet::from([link.clone()]));
    }

    #[tokio::test]
    async fn other_files_in_the_directory_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("apphost");
        std::fs::write(&f, "x").unwrap();
        let mut w = FileWatch::new(std::slice::from_ref(&f)).unwrap();
        std::fs::write(d.path().join("other"), "y").unwrap();
        assert!(
            tokio::time::timeout(
                Duration::from_millis(300),
                w.next_settled(Duration::from_millis(50))
            )
            .await
            .is_err()
        );
    }
}
