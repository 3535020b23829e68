//! Certificate renewal without a restart: a watch on the served certificate and key files.

use super::*;

/// Reload a certificate pair when its files change (renewal without a restart).
pub(super) fn watch_certs(certs: Vec<Arc<CertStore>>, settle: Duration) {
    if certs.is_empty() {
        return;
    }
    let files: Vec<PathBuf> = certs
        .iter()
        .flat_map(|c| {
            let (a, b) = c.paths();
            [a.to_path_buf(), b.to_path_buf()]
        })
        .collect();
    let mut watch = match crate::watch::FileWatch::new(&files) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch certificate files: {e}; renewals need a restart");
            return;
        }
    };
    pub(super) fn reload(store: &CertStore) {
        match store.reload() {
            Ok(()) => tracing::info!("certificate {} reloaded", store.paths().0.display()),
            Err(e) => {
                tracing::warn!("certificate change refused: {e}; keeping the old certificate")
            }
        }
    }
    // The files were loaded before this watch started (they are served from the first accept),
    // and the watch only reports changes after its start: a renewal written in between is
    // loaded now, or it would wait for the next change.
    for store in certs.iter().filter(|s| s.changed_since_load()) {
        reload(store);
    }
    tokio::spawn(async move {
        while let Some(changed) = watch.next_settled(settle).await {
            for store in &certs {
                let (cert, key) = store.paths();
                if changed.contains(cert) || changed.contains(key) {
                    reload(store);
                }
            }
        }
    });
}
