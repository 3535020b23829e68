//! TLS: loading a PEM certificate chain and key, the rustls server config (ALPN `h2`,
//! `http/1.1`), and [`CertStore`], the certificate resolver whose pair can be swapped while
//! serving (certificate renewal without a restart).
//!
//! PEM is read with `rustls-pki-types`' `PemObject`. The crypto provider is *ring*, passed
//! explicitly to every config rather than installed process-wide.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported kind.
    #[error("certificate {cert} and key {key} cannot be used together: {reason}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// The crypto provider apphost uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Load and check a certificate chain and its private key.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.into(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.into(),
            reason: format!(
                "no CERTIFICATE block found (expected BEGIN CERTIFICATE; {})",
                found_blocks(cert)
            ),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.into(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => format!(
                "no private key block found (expected BEGIN PRIVATE KEY, BEGIN RSA PRIVATE KEY or \
                 BEGIN EC PRIVATE KEY; {})",
                found_blocks(key)
            ),
            other => other.to_string(),
        },
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| TlsError::Pair {
        cert: cert.into(),
        key: key.into(),
        reason: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the certificate".into()
            }
            other => other.to_string(),
        },
    })
}

/// The PEM blocks in `path`, for an error saying what was found instead of what was expected:
/// `found BEGIN CERTIFICATE, BEGIN CERTIFICATE` or `found no PEM block`.
fn found_blocks(path: &Path) -> String {
    let text = crate::config::file::read_regular(path, crate::config::file::MAX_PEM_BYTES)
        .map(|(t, _)| t)
        .unwrap_or_default();
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect();
    if labels.is_empty() {
        "found no PEM block".into()
    } else {
        format!("found BEGIN {}", labels.join(", BEGIN "))
    }
}

impl TlsError {
    /// The same error with its paths shown relative to `base` (the config file's directory)
    /// where they are inside it, as the config's own errors show them.
    pub(crate) fn relative_to(self, base: &Path) -> TlsError {
        let rel = |p: PathBuf| p.strip_prefix(base).map(Path::to_path_buf).unwrap_or(p);
        match self {
            TlsError::Cert { path, reason } => TlsError::Cert {
                path: rel(path),
                reason,
            },
            TlsError::Key { path, reason } => TlsError::Key {
                path: rel(path),
                reason,
            },
            TlsError::Pair { cert, key, reason } => TlsError::Pair {
                cert: rel(cert),
                key: rel(key),
                reason,
            },
        }
    }
}

/// Load a server's TLS pair, reporting a failure as a config error at its `https` key (file,
/// line, column), as the other config mistakes are.
pub(crate) fn load_for_server(
    config: &crate::config::Config,
    server: &crate::config::ServerConfig,
) -> Result<Option<Arc<CertStore>>, crate::config::ConfigError> {
    let Some(h) = &server.https else {
        return Ok(None);
    };
    let file = match &config.source {
        crate::config::ConfigSource::File(p) => Some(p.as_path()),
        crate::config::ConfigSource::Embedded => None,
    };
    CertStore::load(&h.cert, &h.key).map(Some).map_err(|e| {
        let e = match file.and_then(Path::parent) {
            Some(dir) => e.relative_to(dir),
            None => e,
        };
        crate::config::ConfigError::new(
            file,
            Some(h.pos),
            format!("servers.{}.https", server.name),
            e.to_string(),
        )
    })
}

/// A certificate resolver holding one pair, replaceable at any time.
#[derive(Debug)]
pub(crate) struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The identities of the cert and key files when they were first loaded (taken before
    /// reading them), so a change made before the files are watched is not missed.
    loaded_ids: [Option<crate::watch::FileId>; 2],
}

impl CertStore {
    /// Load the pair from files.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let loaded_ids = [crate::watch::file_id(cert), crate::watch::file_id(key)];
        let ck = load_pair(cert, key)?;
        Ok(Arc::new(CertStore {
            cert_path: cert.into(),
            key_path: key.into(),
            current: RwLock::new(Arc::new(ck)),
            loaded_ids,
        }))
    }

    /// True when the cert or key file is not the one first loaded (a renewal written between
    /// the load and the start of the watch on the files).
    pub(crate) fn changed_since_load(&self) -> bool {
        let now = [
            crate::watch::file_id(&self.cert_path),
            crate::watch::file_id(&self.key_path),
        ];
        now != self.loaded_ids
    }

    /// The files this store was loaded from.
    pub(crate) fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// Load the files again; on success new handshakes use the new pair, on failure the old pair
    /// stays and the error is returned.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let ck = load_pair(&self.cert_path, &self.key_path)?;
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(ck);
        Ok(())
    }

    /// A rustls server config serving this store's pair, with ALPN `h2` and `http/1.1`.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                cert: self.cert_path.clone(),
                key: self.key_path.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_say_what_was_expected_and_found() {
        let d = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = cert.cert.pem();
        let cert_file = d.path().join("cert.pem");
        std::fs::write(&cert_file, &cert_pem).unwrap();
        // The certificate given as the key, a common slip.
        let e = load_pair(&cert_file, &cert_file).unwrap_err();
        assert_eq!(
            e.relative_to(d.path()).to_string(),
            "private key cert.pem: no private key block found (expected BEGIN PRIVATE KEY, \
             BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY; found BEGIN CERTIFICATE)"
        );
        let key_file = d.path().join("key.pem");
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let e = load_pair(&key_file, &key_file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "certificate {}: no CERTIFICATE block found (expected BEGIN CERTIFICATE; found \
                 BEGIN PRIVATE KEY)",
                key_file.display()
            )
        );
        load_pair(&cert_file, &key_file).unwrap();
    }

    /// A renewal written after the load (before the worker watches the files) is seen.
    #[test]
    fn a_store_knows_when_its_files_changed_since_the_load() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let (cert, key) = (d.path().join("cert.pem"), d.path().join("key.pem"));
            let (tc, tk) = (
                d.path().join(format!("{name}.crt")),
                d.path().join(format!("{name}.key")),
            );
            std::fs::write(&tc, c.cert.pem()).unwrap();
            std::fs::write(&tk, c.signing_key.serialize_pem()).unwrap();
            std::fs::rename(&tk, &key).unwrap();
            std::fs::rename(&tc, &cert).unwrap();
            (cert, key)
        };
        let (cert, key) = write("first");
        let store = CertStore::load(&cert, &key).unwrap();
        assert!(!store.changed_since_load());
        write("renewed");
        assert!(store.changed_since_load());
    }
}
