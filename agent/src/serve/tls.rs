//! TLS on the client port (etcd's `--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, `--client-crl-file`,
//! `--auto-tls`, `--tls-min-version`, `--tls-max-version`,
//! `--cipher-suites`) for `https://` listen URLs.
//!
//! The certificate and key are read again when either file changes (checked
//! at every handshake, as etcd reads them per handshake), so a renewed
//! certificate is served without a restart; a pair that does not load keeps
//! the previous one and is logged. Only rustls' `ring` provider is used.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::peer::tls::{TlsError, auto_cert, certs, key, provider};

#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    pub auto_tls: bool,
    /// `TLS1.2` or `TLS1.3` (etcd's names); `None`: TLS 1.2.
    pub min_version: Option<String>,
    /// `None`: TLS 1.3.
    pub max_version: Option<String>,
    /// Go's names of the TLS 1.2 suites to allow (`--cipher-suites`).
    pub cipher_suites: Vec<String>,
}

fn config_err(msg: impl Into<String>) -> TlsError {
    TlsError::Config(msg.into())
}

fn version(flag: &str, v: &str) -> Result<u8, TlsError> {
    match v {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        other => Err(config_err(format!(
            "{flag} {other:?}: cairn supports TLS1.2 and TLS1.3"
        ))),
    }
}

/// Go's cipher suite name → rustls' suite (TLS 1.2 suites rustls has).
fn suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

impl ClientTls {
    /// Whether certificates are configured (or generated) for https URLs.
    pub fn has_certificate(&self) -> bool {
        self.auto_tls || (self.cert_file.is_some() && self.key_file.is_some())
    }

    /// The server configuration for https client URLs. `hosts` name a
    /// generated certificate (`--auto-tls`).
    pub fn server_config(
        &self,
        data_dir: &std::path::Path,
        hosts: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut provider = (*provider()).clone();
        if !self.cipher_suites.is_empty() {
            let mut chosen = Vec::new();
            for name in &self.cipher_suites {
                chosen.push(suite(name).ok_or_else(|| {
                    config_err(format!(
                        "--cipher-suites: unsupported cipher suite {name:?} (cairn has the ECDHE AES-GCM and CHACHA20-POLY1305 suites)"
                    ))
                })?);
            }
            // TLS 1.3's suites are not configurable, in Go either.
            chosen.extend(
                provider
                    .cipher_suites
                    .iter()
                    .filter(|s| s.version() == &rustls::version::TLS13)
                    .copied(),
            );
            provider.cipher_suites = chosen;
        }
        let min = match &self.min_version {
            Some(v) => version("--tls-min-version", v)?,
            None => 2,
        };
        let max = match &self.max_version {
            Some(v) => version("--tls-max-version", v)?,
            None => 3,
        };
        if min > max {
            return Err(config_err(
                "--tls-min-version is greater than --tls-max-version",
            ));
        }
        if !self.cipher_suites.is_empty() && max == 3 && min == 3 {
            return Err(config_err(
                "--cipher-suites applies to TLS 1.2 only; it cannot be used with --tls-min-version TLS1.3",
            ));
        }
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if min <= 2 {
            versions.push(&rustls::version::TLS12);
        }
        if max >= 3 {
            versions.push(&rustls::version::TLS13);
        }
        let provider = Arc::new(provider);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| config_err(e.to_string()))?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), true) => {
                let mut roots = RootCertStore::empty();
                for c in certs("--trusted-ca-file", ca)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        flag: "--trusted-ca-file",
                        path: ca.display().to_string(),
                        why: e.to_string(),
                    })?;
                }
                let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                );
                if let Some(crl) = &self.crl_file {
                    let pem = crate::peer::tls::read("--client-crl-file", crl)?;
                    let crls = rustls_pemfile::crls(&mut pem.as_slice())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| TlsError::File {
                            flag: "--client-crl-file",
                            path: crl.display().to_string(),
                            why: format!("not a PEM CRL: {e}"),
                        })?;
                    v = v.with_crls(crls);
                }
                builder.with_client_cert_verifier(v.build().map_err(|e| config_err(e.to_string()))?)
            }
            (None, true) => {
                return Err(config_err("--client-cert-auth needs --trusted-ca-file"));
            }
            _ => builder.with_no_client_auth(),
        };
        let resolver: Arc<dyn ResolvesServerCert> = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Arc::new(Reloading::new(c.clone(), k.clone(), provider.clone())?),
            (Some(_), None) | (None, Some(_)) => {
                return Err(config_err("--cert-file and --key-file go together"));
            }
            (None, None) if self.auto_tls => {
                let (chain, key) = auto_cert(
                    "--auto-tls",
                    &data_dir.join("fixtures").join("client"),
                    hosts,
                )?;
                let ck = CertifiedKey::from_der(chain, key, &provider)
                    .map_err(|e| config_err(format!("--auto-tls: {e}")))?;
                Arc::new(Fixed(Arc::new(ck)))
            }
            (None, None) => {
                return Err(config_err(
                    "an https client URL needs --cert-file and --key-file (or --auto-tls)",
                ));
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The configured certificate, read again when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>, u64, u64);

fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Stamp {
    let m = |p: &std::path::Path| std::fs::metadata(p).ok();
    let (c, k) = (m(cert), m(key));
    (
        c.as_ref().and_then(|m| m.modified().ok()),
        k.as_ref().and_then(|m| m.modified().ok()),
        c.map(|m| m.len()).unwrap_or(0),
        k.map(|m| m.len()).unwrap_or(0),
    )
}

impl Reloading {
    fn new(
        cert: PathBuf,
        key_path: PathBuf,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Reloading, TlsError> {
        let s = stamp(&cert, &key_path);
        let ck = Self::load(&cert, &key_path, &provider)?;
        Ok(Reloading {
            cert,
            key: key_path,
            provider,
            state: Mutex::new((s, Arc::new(ck))),
        })
    }

    fn load(
        cert: &std::path::Path,
        key_path: &std::path::Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain = certs("--cert-file", cert)?;
        let k = key("--key-file", key_path)?;
        CertifiedKey::from_der(chain, k, provider).map_err(|e| TlsError::File {
            flag: "--key-file",
            path: key_path.display().to_string(),
            why: format!("does not match --cert-file {}: {e}", cert.display()),
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamp(&self.cert, &self.key);
        let mut st = self.state.lock().unwrap();
        if now != st.0 {
            match Self::load(&self.cert, &self.key, &self.provider) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "client certificate reloaded");
                    *st = (now, Arc::new(ck));
                }
                Err(e) => {
                    // A half-written pair: keep serving the old one; the
                    // next handshake tries again.
                    tracing::warn!(error = %e, "client certificate not reloaded; keeping the previous one");
                }
            }
        }
        Some(st.1.clone())
    }
}
