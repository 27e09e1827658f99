//! Connection strings as libpq reads them, TLS included: what the offloader, `signalgate migrate`
//! and the history reads connect with.
//!
//! tokio-postgres reads both forms (`postgresql://user@host:port/db?…` and `host=… user=…`) but
//! knows only `sslmode=disable|prefer|require`, and no root certificate. This module takes
//! `sslmode` and `sslrootcert` out of the string, hands the rest to tokio-postgres, and builds
//! a rustls connector for the mode, as libpq does:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | signed by a CA of `sslrootcert`, for the host connected to |
//!
//! `verify-ca` and `verify-full` need `sslrootcert` (a PEM file of CA certificates).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What connecting to one database takes.
#[derive(Clone)]
pub struct Target {
    /// Everything but TLS.
    pub config: tokio_postgres::Config,
    /// TLS as `sslmode` and `sslrootcert` say.
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How much the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Ca,
    Full,
}

impl Target {
    /// Reads a connection string; the error says what is wrong with it (never its password).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, mode, root) = take_tls(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        let (ssl, verify) = match mode.as_deref().unwrap_or("prefer") {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
            "require" if root.is_some() => (SslMode::Require, Verify::Ca),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Ca),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        };
        config.ssl_mode(ssl);
        let tls = tls_config(verify, root.as_deref())?;
        Ok(Target { config, tls: MakeRustlsConnect::new(tls) })
    }

    /// Connects within `timeout` and drives the connection on the current runtime (the task
    /// ends once the client is dropped).
    pub async fn connect(&self, timeout: Duration) -> Result<(Client, tokio::task::JoinHandle<()>), String> {
        let (client, connection) = tokio::time::timeout(timeout, self.config.connect(self.tls.clone()))
            .await
            .map_err(|_| format!("cannot connect to PostgreSQL within {} s", timeout.as_secs()))?
            .map_err(|e| format!("cannot connect to PostgreSQL: {}", super::migrate::describe(&e)))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, driver))
    }
}

/// The connection string without `sslmode` and `sslrootcert`, and their values.
fn take_tls(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    let mut keep = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            false
        }
        "sslrootcert" => {
            root = Some(value);
            false
        }
        _ => true,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if keep(k, percent_decode(v)?) {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if keep(&k, v.clone()) {
                kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root))
}

/// The `key=value` pairs of a libpq keyword string (values unquoted and unescaped).
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?} has no value (key=value)"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("a value ends in a backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("bad percent-encoding in {s:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

fn tls_config(verify: Verify, root: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let webpki = match (verify, root) {
        (Verify::Nothing, _) => None,
        (_, None) => {
            return Err("sslmode verify-ca and verify-full need sslrootcert (a PEM file of CA certificates)".into())
        }
        (_, Some(path)) => {
            let roots = crate::tls::roots(path).map_err(|e| format!("sslrootcert {e}"))?;
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            Some(webpki)
        }
    };
    let verifier = Arc::new(Verifier { webpki, name: verify == Verify::Full, provider });
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// Checks the server's certificate as far as `sslmode` asks: not at all (the handshake's
/// signatures still are), its chain up to `sslrootcert`, or that and its name.
#[derive(Debug)]
struct Verifier {
    /// The chain's check; `None`: the certificate is not checked.
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// Whether the certificate must be for the host connected to.
    name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_taken_out_of_both_forms() {
        let (rest, mode, root) =
            take_tls("host=db.example port=5432 sslmode = verify-full sslrootcert='/etc/ca dir/root.crt' user=u")
                .unwrap();
        assert_eq!(rest, "host='db.example' port='5432' user='u'");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/etc/ca dir/root.crt")));
        let (rest, mode, root) =
            take_tls("postgresql://u:p@db:5432/x?sslmode=require&application_name=sg&sslrootcert=%2Fca.pem").unwrap();
        assert_eq!(rest, "postgresql://u:p@db:5432/x?application_name=sg");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("require"), Some("/ca.pem")));
        assert_eq!(take_tls("postgres://h/db?sslmode=disable").unwrap().0, "postgres://h/db");
        assert_eq!(take_tls(r"password='it\'s' host=h").unwrap().0, r"password='it\'s' host='h'");
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(Target::parse("host=h sslmode=sometimes").unwrap_err().contains("sslmode \"sometimes\""));
        assert!(Target::parse("host=h sslmode=verify-full").unwrap_err().contains("need sslrootcert"));
        assert!(Target::parse("host=h sslmode=verify-ca sslrootcert=/nonexistent")
            .unwrap_err()
            .contains("/nonexistent"));
        assert!(Target::parse("host=h password='open").unwrap_err().contains("unterminated"));
        assert!(Target::parse("host=h sslmode=require").is_ok());
        assert!(Target::parse("postgresql://u@h/db").is_ok());
    }
}
