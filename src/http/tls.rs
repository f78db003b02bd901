//! The HTTPS listener's certificate: the configured one, or a self-signed
//! one for `public_hostname` generated once and kept under
//! `state_path/http/` (mode 0600) so clients see the same certificate
//! across restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::HttpError;
use crate::config::Config;

/// How long a generated certificate is valid.
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Where the generated certificate and key live.
pub fn generated_paths(config: &Config) -> (PathBuf, PathBuf) {
    let dir = config.state_path.join("http");
    (dir.join("tls.crt"), dir.join("tls.key"))
}

fn read(path: &Path) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|e| HttpError::Tls(format!("cannot read {}: {e}", path.display())))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), HttpError> {
    crate::secret_file::write(path, data)
        .map_err(|e| HttpError::Tls(format!("cannot write {}: {e}", path.display())))
}

/// The PEM certificate chain and key to serve.
fn pem_pair(config: &Config) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
    if let (Some(cert), Some(key)) = (&config.http.tls_certificate, &config.http.tls_private_key) {
        return Ok((read(cert)?, read(key)?));
    }
    let (cert, key) = generated_paths(config);
    if cert.exists() && key.exists() {
        return Ok((read(&cert)?, read(&key)?));
    }
    let dir = cert.parent().unwrap_or(&config.state_path);
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| HttpError::Tls(format!("cannot create {}: {e}", dir.display())))?;
    let mut names = vec![config.public_hostname.clone()];
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    let (cert_pem, key_pem) = crate::certs::self_signed(&names, SELF_SIGNED_VALIDITY)
        .map_err(|e| HttpError::Tls(format!("cannot generate a certificate: {e}")))?;
    write_private(&key, key_pem.as_bytes())?;
    write_private(&cert, cert_pem.as_bytes())?;
    tracing::info!(certificate = %cert.display(), hostname = %config.public_hostname,
        "generated a self-signed HTTPS certificate");
    Ok((cert_pem.into_bytes(), key_pem.into_bytes()))
}

/// The rustls server configuration (aws-lc-rs, HTTP/1.1 and 1.0).
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, HttpError> {
    let (cert_pem, key_pem) = pem_pair(config)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| HttpError::Tls(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(HttpError::Tls(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| HttpError::Tls(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    // http/1.0 too: `curl --http1.0` offers only that, and a server
    // that knows none of the offered protocols must fail the handshake.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(cfg))
}
