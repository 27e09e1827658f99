//! What the node's TLS clients share (PostgreSQL, a FIX venue): the crypto provider and the
//! certificate authorities read from a PEM file.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The crypto provider: ring, which builds with a C compiler alone (aws-lc-rs, rustls's other
/// provider and the one with post-quantum key exchange, needs more of a toolchain).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate authorities in the PEM file at `path`; an error names the file.
pub fn roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| format!("{path}: {e:?}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(roots)
}
