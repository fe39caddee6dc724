//! TLS for the peer transport (QUIC needs TLS 1.3 whatever the flags say).
//!
//! With `--peer-cert-file`/`--peer-key-file` the member presents that
//! certificate; with `--peer-trusted-ca-file` it checks the other side's
//! certificate against that CA (and, with `--peer-client-cert-auth`, asks
//! connecting members for theirs). Without certificates (or with
//! `--peer-auto-tls`) it makes a self-signed one under
//! `<data-dir>/fixtures/peer`, as etcd does: traffic is encrypted, but
//! members are not authenticated. Only the `ring` provider is used.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// ALPN of cairn's peer protocol.
pub const ALPN: &[u8] = b"cairn-peer/1";

#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {why}")]
    File {
        flag: &'static str,
        path: String,
        why: String,
    },
    #[error("peer TLS: {0}")]
    Config(String),
}

pub struct Configs {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
    /// True when the other side's certificate is checked against a CA.
    pub verified: bool,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        flag,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

pub(crate) fn certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            flag,
            path: path.display().to_string(),
            why: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            flag,
            path: path.display().to_string(),
            why: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(flag, path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|k| k.ok_or_else(|| "holds no PEM private key".to_string()))
        .map_err(|why| TlsError::File {
            flag,
            path: path.display().to_string(),
            why,
        })
}

/// A self-signed certificate for this member, made once and kept in the
/// data directory.
pub(crate) fn auto_cert(
    flag: &'static str,
    dir: &Path,
    hosts: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let mut names: Vec<String> = hosts.to_vec();
        names.push("localhost".into());
        names.sort();
        names.dedup();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Config(format!("cannot generate a certificate: {e}")))?;
        let io = |e: std::io::Error| TlsError::Config(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        std::fs::write(&cert_path, ck.cert.pem()).map_err(io)?;
    }
    Ok((certs(flag, &cert_path)?, key(flag, &key_path)?))
}

impl PeerTls {
    /// Builds both sides' TLS configurations. `hosts` are the advertised
    /// peer hosts (for a generated certificate's names).
    pub fn configs(&self, data_dir: &Path, hosts: &[String]) -> Result<Configs, TlsError> {
        let provider = provider();
        let (chain, key) = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => (certs("--peer-cert-file", c)?, key("--peer-key-file", k)?),
            (Some(_), None) | (None, Some(_)) => {
                return Err(TlsError::Config(
                    "--peer-cert-file and --peer-key-file go together".into(),
                ));
            }
            (None, None) => auto_cert(
                "--peer-auto-tls",
                &data_dir.join("fixtures").join("peer"),
                hosts,
            )?,
        };
        let roots = match &self.trusted_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs("--peer-trusted-ca-file", ca)? {
                    roots.add(c).map_err(|e| TlsError::File {
                        flag: "--peer-trusted-ca-file",
                        path: ca.display().to_string(),
                        why: e.to_string(),
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        if self.client_cert_auth && roots.is_none() {
            return Err(TlsError::Config(
                "--peer-client-cert-auth needs --peer-trusted-ca-file".into(),
            ));
        }
        let tls13 = &[&rustls::version::TLS13];
        let err = |e: rustls::Error| TlsError::Config(e.to_string());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(err)?;
        let server = match (&roots, self.client_cert_auth) {
            (Some(roots), true) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                server.with_client_cert_verifier(v)
            }
            _ => server.with_no_client_auth(),
        };
        let mut server = server
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(err)?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(err)?;
        let client = match &roots {
            Some(roots) => client.with_root_certificates(roots.clone()),
            None => client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(
                    provider.signature_verification_algorithms,
                ))),
        };
        let mut client = client.with_client_auth_cert(chain, key).map_err(err)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Configs {
            server,
            client,
            verified: roots.is_some(),
        })
    }
}

/// Accepts any server certificate (auto TLS: encryption without
/// authentication, as etcd's `--peer-auto-tls`), still checking that the
/// server holds the certificate's key.
#[derive(Debug)]
struct AnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
