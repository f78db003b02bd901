//! X.509 material for Draupnir instances.
//!
//! This module owns certificate issuance: a fresh per-instance CA, the
//! server certificate PostgreSQL presents, and the single client certificate
//! that may log in to that instance, plus a self-signed certificate for
//! Draupnir's own HTTPS listener. Keys are ECDSA P-256 and everything is
//! returned as PEM; nothing here touches the file system.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::secret::Secret;

/// How far in the past `not_before` is set, to tolerate clock skew.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// All PEM material for one instance.
///
/// `ca_cert_pem` goes to PostgreSQL as `ssl_ca_file` and to the client as the
/// trust anchor; the server pair is PostgreSQL's `ssl_cert_file`/`ssl_key_file`;
/// the client pair is handed to the developer. The CA key is not kept: no
/// further certificate can ever be issued under this CA.
#[derive(Clone)]
pub struct InstanceCerts {
    pub ca_cert_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: Secret<String>,
    pub client_cert_pem: String,
    pub client_key_pem: Secret<String>,
    /// Expiry shared by all three certificates (whole seconds, UTC).
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for InstanceCerts {
    // Keys are secrets: keep them out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceCerts")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("at least one server name is required")]
    NoServerNames,
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("validity period {0:?} is out of range")]
    InvalidValidity(Duration),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Issues a fresh CA, a server certificate and a client certificate.
///
/// * CA: `CN = "Draupnir instance CA <label>"`, CA:TRUE (path length 0),
///   KeyCertSign + CrlSign.
/// * Server: SANs are every entry of `server_names` (IP literals become IP
///   SANs, everything else DNS SANs), `CN` = the first name, ServerAuth EKU.
/// * Client: `CN = client_cn`, ClientAuth EKU.
///
/// All three are valid from now − 1 h to now + `validity`.
pub fn issue_instance_certs(
    label: &str,
    server_names: &[String],
    client_cn: &str,
    validity: Duration,
) -> Result<InstanceCerts, CertError> {
    let (not_before, not_after) = validity_window(validity)?;
    let server_sans = sans(server_names)?;
    if client_cn.is_empty() {
        return Err(CertError::InvalidName {
            name: client_cn.to_owned(),
            reason: "client common name must not be empty".into(),
        });
    }

    // CA.
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name(&format!("Draupnir instance CA {label}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // Server.
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut server_params = leaf_params(not_before, not_after);
    server_params.subject_alt_names = server_sans;
    server_params.distinguished_name = common_name(&server_names[0]);
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    // Client.
    let client_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut client_params = leaf_params(not_before, not_after);
    client_params.distinguished_name = common_name(client_cn);
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    Ok(InstanceCerts {
        ca_cert_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: Secret::new(server_key.serialize_pem()),
        client_cert_pem: client_cert.pem(),
        client_key_pem: Secret::new(client_key.serialize_pem()),
        not_after,
    })
}

/// A self-signed server certificate (for an HTTPS listener): returns
/// `(cert_pem, key_pem)`. SANs and CN as for the instance server certificate.
pub fn self_signed(
    server_names: &[String],
    validity: Duration,
) -> Result<(String, String), CertError> {
    let (not_before, not_after) = validity_window(validity)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = leaf_params(not_before, not_after);
    params.subject_alt_names = sans(server_names)?;
    params.distinguished_name = common_name(&server_names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    // X.509 times have whole-second precision; truncate so `not_after`
    // reported to callers equals what is in the certificate.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|_| CertError::InvalidValidity(validity))?;
    let span =
        time::Duration::try_from(validity).map_err(|_| CertError::InvalidValidity(validity))?;
    let not_after = now
        .checked_add(span)
        .ok_or(CertError::InvalidValidity(validity))?;
    // Beyond 9999 is not encodable in X.509.
    if validity.is_zero() || not_after.year() > 9999 {
        return Err(CertError::InvalidValidity(validity));
    }
    let not_before = now - BACKDATE;
    Ok((not_before, not_after))
}

fn leaf_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn sans(server_names: &[String]) -> Result<Vec<SanType>, CertError> {
    if server_names.is_empty() {
        return Err(CertError::NoServerNames);
    }
    server_names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if name.is_empty() => Err(CertError::InvalidName {
                name: name.clone(),
                reason: "empty name".into(),
            }),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e: rcgen::Error| CertError::InvalidName {
                    name: name.clone(),
                    reason: e.to_string(),
                }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "draupnir-certs-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn write(&self, name: &str, body: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, body).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn instance_certs_verify_with_openssl() {
        let certs = issue_instance_certs(
            "inst-42",
            &names(&["localhost", "127.0.0.1", "db.example.test", "::1"]),
            "draupnir",
            Duration::from_secs(86_400),
        )
        .unwrap();
        let dir = TempDir::new("verify");
        let ca = dir.write("ca.pem", &certs.ca_cert_pem);
        let server = dir.write("server.pem", &certs.server_cert_pem);
        let server_key = dir.write("server.key", certs.server_key_pem.expose());
        let client = dir.write("client.pem", &certs.client_cert_pem);
        let client_key = dir.write("client.key", certs.client_key_pem.expose());

        let out = openssl(&["verify", "-CAfile", s(&ca), s(&client)]);
        assert!(out.contains(": OK"), "{out}");
        let out = openssl(&["verify", "-CAfile", s(&ca), s(&server)]);
        assert!(out.contains(": OK"), "{out}");
        // Purpose-specific verification exercises the EKUs.
        openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&ca),
            s(&client),
        ]);
        openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            s(&ca),
            s(&server),
        ]);

        // Keys match certificates.
        for (cert, key) in [(&client, &client_key), (&server, &server_key)] {
            let from_cert = openssl(&["x509", "-in", s(cert), "-noout", "-pubkey"]);
            let from_key = openssl(&["pkey", "-in", s(key), "-pubout"]);
            assert_eq!(from_cert, from_key);
        }

        let client_text = openssl(&["x509", "-in", s(&client), "-noout", "-text"]);
        assert!(client_text.contains("CN = draupnir"), "{client_text}");
        assert!(client_text.contains("TLS Web Client Authentication"));
        assert!(client_text.contains("CN = Draupnir instance CA inst-42"));

        let server_text = openssl(&["x509", "-in", s(&server), "-noout", "-text"]);
        assert!(
            server_text.contains("Subject: CN = localhost"),
            "{server_text}"
        );
        assert!(server_text.contains("DNS:localhost"), "{server_text}");
        assert!(
            server_text.contains("IP Address:127.0.0.1"),
            "{server_text}"
        );
        assert!(
            server_text.contains("IP Address:0:0:0:0:0:0:0:1"),
            "{server_text}"
        );
        assert!(server_text.contains("DNS:db.example.test"));
        assert!(server_text.contains("TLS Web Server Authentication"));

        let ca_text = openssl(&["x509", "-in", s(&ca), "-noout", "-text"]);
        assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
        assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
        assert!(ca_text.contains("ecdsa-with-SHA256"));
        assert!(ca_text.contains("P-256"));

        // not_after matches the certificate and is ~1 day away.
        let end = openssl(&["x509", "-in", s(&client), "-noout", "-enddate"]);
        let expected = format!(
            "notAfter={} {:>2} {:02}:{:02}:{:02} {} GMT",
            month_abbrev(certs.not_after.month()),
            certs.not_after.day(),
            certs.not_after.hour(),
            certs.not_after.minute(),
            certs.not_after.second(),
            certs.not_after.year()
        );
        assert_eq!(end.trim(), expected);
        let left = certs.not_after - OffsetDateTime::now_utc();
        assert!(left > time::Duration::hours(23) && left <= time::Duration::hours(24));
    }

    fn month_abbrev(m: time::Month) -> &'static str {
        [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ][m as usize - 1]
    }

    #[test]
    fn different_instances_have_different_cas() {
        let a = issue_instance_certs(
            "a",
            &names(&["localhost"]),
            "draupnir",
            Duration::from_secs(60),
        )
        .unwrap();
        let b = issue_instance_certs(
            "b",
            &names(&["localhost"]),
            "draupnir",
            Duration::from_secs(60),
        )
        .unwrap();
        let dir = TempDir::new("cross");
        let ca_a = dir.write("ca_a.pem", &a.ca_cert_pem);
        let client_b = dir.write("client_b.pem", &b.client_cert_pem);
        let out = Command::new("openssl")
            .args(["verify", "-CAfile", s(&ca_a), s(&client_b)])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn self_signed_verifies_against_itself() {
        let (cert, key) = self_signed(
            &names(&["draupnir.local", "10.0.0.1"]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let dir = TempDir::new("self");
        let c = dir.write("cert.pem", &cert);
        let k = dir.write("key.pem", &key);
        let out = openssl(&["verify", "-CAfile", s(&c), s(&c)]);
        assert!(out.contains(": OK"), "{out}");
        let from_cert = openssl(&["x509", "-in", s(&c), "-noout", "-pubkey"]);
        let from_key = openssl(&["pkey", "-in", s(&k), "-pubout"]);
        assert_eq!(from_cert, from_key);
        let text = openssl(&["x509", "-in", s(&c), "-noout", "-text"]);
        assert!(text.contains("DNS:draupnir.local"));
        assert!(text.contains("IP Address:10.0.0.1"));
        assert!(text.contains("CN = draupnir.local"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            issue_instance_certs("x", &[], "draupnir", Duration::from_secs(60)),
            Err(CertError::NoServerNames)
        ));
        assert!(matches!(
            self_signed(&names(&[""]), Duration::from_secs(60)),
            Err(CertError::InvalidName { .. })
        ));
        assert!(matches!(
            self_signed(&names(&["bad name\u{e9}"]), Duration::from_secs(60)),
            Err(CertError::InvalidName { .. })
        ));
        assert!(matches!(
            issue_instance_certs("x", &names(&["h"]), "", Duration::from_secs(60)),
            Err(CertError::InvalidName { .. })
        ));
        assert!(matches!(
            self_signed(&names(&["h"]), Duration::from_secs(u64::MAX)),
            Err(CertError::InvalidValidity(_))
        ));
        assert!(matches!(
            self_signed(&names(&["h"]), Duration::ZERO),
            Err(CertError::InvalidValidity(_))
        ));
    }
}
