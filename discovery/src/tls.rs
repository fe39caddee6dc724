//! TLS to the cluster's `https://` client URLs, for the agents that are
//! clients of it (a proxy forwarding, a learner adding itself): etcd
//! grpc-proxy's `--cacert`, `--cert`, `--key`. Without `--cacert` the
//! server is verified against `$SSL_CERT_FILE` (as Go reads it), else the
//! system bundle.
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates the cluster's server certificates must chain to.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM (certificate, key) presented to a cluster with client-cert-auth.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where the trusted CA certificates are read from when neither `--cacert`
/// nor `SSL_CERT_FILE` is given (Debian's, and Red Hat's bundle).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

impl ClientTls {
    fn roots(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(ca) = &self.ca_pem {
            return Ok(ca.clone());
        }
        let paths: Vec<String> = match std::env::var("SSL_CERT_FILE") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => SYSTEM_BUNDLES.iter().map(|s| s.to_string()).collect(),
        };
        for p in &paths {
            if let Ok(b) = std::fs::read(p) {
                return Ok(b);
            }
        }
        anyhow::bail!(
            "no CA certificates to verify the cluster's https endpoints: give --cacert (or set SSL_CERT_FILE)"
        )
    }

    /// A tonic endpoint for `url`, with TLS when it is `https://`.
    pub fn endpoint(&self, url: &str, dial_timeout: Duration) -> anyhow::Result<Endpoint> {
        let mut ep = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("invalid endpoint {url:?}"))?
            .connect_timeout(dial_timeout);
        if url.starts_with("https://") {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.roots()?));
            if let Some((c, k)) = &self.identity {
                tls = tls.identity(Identity::from_pem(c, k));
            }
            ep = ep
                .tls_config(tls)
                .with_context(|| format!("TLS for endpoint {url}"))?;
        }
        Ok(ep)
    }
}
