//! In-process PostgreSQL connections made by Draupnir itself.
//!
//! This module owns how the daemon talks to an instance: TCP+TLS with
//! verify-ca semantics and the per-instance client certificate (readiness
//! checks and security proofs of a finalised image), plain TCP (to prove it
//! is refused), and the Unix socket (admin statements). It also owns the
//! classification of connection failures into "could not reach the server"
//! versus "the server refused us", keeping the server's own message.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

#[cfg(test)]
/// Default interval between attempts in [`wait_ready_tls`].
pub const READY_POLL_INTERVAL: Duration = Duration::from_millis(5);

const APPLICATION_NAME: &str = "draupnir";

/// Why a connection could not be made. `Display` is always one line and,
/// when the server answered, carries the server's own message.
#[derive(Debug, thiserror::Error)]
pub enum PgConnError {
    /// The PEM material given to us is unusable (our bug or bad input, not
    /// the server's doing).
    #[error("invalid TLS material: {0}")]
    TlsConfig(String),
    /// Nothing usable answered: refused, reset, unreachable, closed early.
    #[error("could not connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// The attempt did not complete within its time limit.
    #[error("timed out after {after:?} connecting to {target}")]
    Timeout { target: String, after: Duration },
    /// The TLS handshake failed (server certificate did not verify against
    /// the CA, server does not speak TLS, alert from the server, ...).
    #[error("TLS handshake with {target} failed: {message}")]
    Tls { target: String, message: String },
    /// The server answered and refused authentication (SQLSTATE class 28,
    /// e.g. `no pg_hba.conf entry ...`, `certificate authentication failed
    /// ...`, `role "x" does not exist`).
    #[error("server {target} refused authentication ({code}): {message}")]
    Auth {
        target: String,
        code: String,
        message: String,
    },
    /// The server answered with some other error (e.g. 57P03 "the database
    /// system is starting up", 3D000 unknown database).
    #[error("server {target} rejected the connection ({code}): {message}")]
    Server {
        target: String,
        code: String,
        message: String,
    },
    #[cfg(test)]
    /// [`wait_ready_tls`] ran out of time; `last` is the last attempt's error.
    #[error("{target} not ready after {waited:?} ({attempts} attempts); last error: {last}")]
    NotReady {
        target: String,
        waited: Duration,
        attempts: u32,
        last: Box<PgConnError>,
    },
    /// Anything else reported by the driver.
    #[error("connection to {target} failed: {message}")]
    Other { target: String, message: String },
}

impl PgConnError {
    /// The server was reached and refused to authenticate us.
    pub fn is_auth_refused(&self) -> bool {
        matches!(self, PgConnError::Auth { .. })
    }

    #[cfg(test)]
    /// No server could be talked to (refused, unreachable, timed out, or
    /// never became ready).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PgConnError::Connect { .. }
                | PgConnError::Timeout { .. }
                | PgConnError::NotReady { .. }
        )
    }

    #[cfg(test)]
    /// The error message the server sent, if it sent one.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            PgConnError::Auth { message, .. } | PgConnError::Server { message, .. } => {
                Some(message)
            }
            PgConnError::NotReady { last, .. } => last.server_message(),
            _ => None,
        }
    }

    /// The SQLSTATE code the server sent, if it sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgConnError::Auth { code, .. } | PgConnError::Server { code, .. } => Some(code),
            #[cfg(test)]
            PgConnError::NotReady { last, .. } => last.sqlstate(),
            _ => None,
        }
    }

    #[cfg(test)]
    /// Whether retrying the same attempt could plausibly succeed.
    fn is_terminal(&self) -> bool {
        matches!(self, PgConnError::Auth { .. } | PgConnError::TlsConfig(_))
    }

    fn classify(target: &str, err: &tokio_postgres::Error) -> PgConnError {
        let target = target.to_owned();
        if let Some(db) = err.as_db_error() {
            let code = db.code().code().to_owned();
            let mut message = one_line(db.message());
            if let Some(detail) = db.detail() {
                message.push_str(" (");
                message.push_str(&one_line(detail));
                message.push(')');
            }
            return if code.starts_with("28") {
                PgConnError::Auth {
                    target,
                    code,
                    message,
                }
            } else {
                PgConnError::Server {
                    target,
                    code,
                    message,
                }
            };
        }
        let message = error_message(err);
        if chain_has_rustls_error(err) || message.starts_with("error performing TLS handshake") {
            return PgConnError::Tls { target, message };
        }
        if message.starts_with("timeout waiting for server") {
            // tokio-postgres' own connect_timeout fired.
            return PgConnError::Connect { target, message };
        }
        if message.starts_with("error connecting to server")
            || message.starts_with("error communicating with the server")
            || message.starts_with("connection closed")
            || chain_has_io_error(err)
        {
            return PgConnError::Connect { target, message };
        }
        PgConnError::Other { target, message }
    }
}

#[cfg(test)]
/// PEM material for a verify-ca TLS connection with a client certificate.
#[derive(Clone, Copy)]
pub struct ClientCert<'a> {
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

#[cfg(test)]
impl std::fmt::Debug for ClientCert<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

/// One-line rendering of a driver error including its whole source chain
/// (tokio-postgres' own `Display` omits the cause). Use it for errors of
/// statements run on a connected client too.
pub fn error_message(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!(
            "{} {}: {}",
            db.severity(),
            db.code().code(),
            one_line(db.message())
        );
    }
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let text = e.to_string();
        // io::Error wrapping another error often repeats it verbatim.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    one_line(&out)
}

/// Builds the TLS connector used by [`connect_tls`]: trusts only `ca_pem`,
/// verify-ca semantics (chain must verify; the host name is not checked),
/// presents `client` (`(cert_pem, key_pem)`) when given. The crypto provider
/// is aws-lc-rs, chosen explicitly so no process-wide default is needed.
pub fn tls_connector(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<MakeRustlsConnect, PgConnError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PgConnError::TlsConfig(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PgConnError::TlsConfig(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PgConnError::TlsConfig(
            "CA PEM contains no certificate".into(),
        ));
    }
    let verifier = VerifyCa::new(roots, provider.clone())?;

    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgConnError::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));

    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PgConnError::TlsConfig(format!("client certificate PEM: {e}")))?;
            if chain.is_empty() {
                return Err(PgConnError::TlsConfig(
                    "client certificate PEM contains no certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| PgConnError::TlsConfig(format!("client key PEM: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PgConnError::TlsConfig(format!("client certificate/key: {e}")))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// TCP + TLS (sslmode=require with verify-ca semantics against `ca_pem`),
/// presenting the client certificate `(cert_pem, key_pem)` when given.
/// The connection task is spawned on the current tokio runtime.
pub async fn connect_tls(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<Client, PgConnError> {
    let tls = tls_connector(ca_pem, client)?;
    connect_tls_with(&tls, host, port, user, dbname, timeout).await
}

/// TCP without TLS (sslmode=disable); used to prove plain TCP is refused.
pub async fn connect_plain(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    timeout: Duration,
) -> Result<Client, PgConnError> {
    let mut config = base_config(user, dbname, timeout);
    config.host(host).port(port).ssl_mode(SslMode::Disable);
    let target = target(user, host, port, dbname);
    run_connect(&target, timeout, config.connect(NoTls)).await
}

/// Unix socket `.s.PGSQL.<port>` in directory `socket_dir` (peer/trust auth).
pub async fn connect_unix(
    socket_dir: &Path,
    port: u16,
    user: &str,
    dbname: &str,
    timeout: Duration,
) -> Result<Client, PgConnError> {
    connect_unix_with(socket_dir, port, user, None, "", dbname, timeout).await
}

/// [`connect_unix`] with, optionally, a password and server options (the
/// finalise's connections: its temporary admin role authenticates by
/// password, and every one of them overrides settings an upload may have
/// attached to its databases and roles).
pub async fn connect_unix_with(
    socket_dir: &Path,
    port: u16,
    user: &str,
    password: Option<&str>,
    options: &str,
    dbname: &str,
    timeout: Duration,
) -> Result<Client, PgConnError> {
    let mut config = base_config(user, dbname, timeout);
    config
        .host_path(socket_dir)
        .port(port)
        .ssl_mode(SslMode::Disable);
    if !options.is_empty() {
        config.options(options);
    }
    if let Some(pw) = password {
        config.password(pw);
    }
    let target = target(user, &socket_dir.display().to_string(), port, dbname);
    run_connect(&target, timeout, config.connect(NoTls)).await
}

#[cfg(test)]
/// Polls [`connect_tls`] every [`READY_POLL_INTERVAL`] until it succeeds or
/// `deadline` (measured from the call) passes; returns the connected client.
/// Stops early on an authentication refusal or unusable PEM, since retrying
/// cannot help; otherwise the deadline yields [`PgConnError::NotReady`].
pub async fn wait_ready_tls(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    cert: &ClientCert<'_>,
    deadline: Duration,
) -> Result<Client, PgConnError> {
    wait_ready_tls_every(
        host,
        port,
        user,
        dbname,
        cert,
        deadline,
        READY_POLL_INTERVAL,
    )
    .await
}

#[cfg(test)]
/// [`wait_ready_tls`] with an explicit poll interval.
pub async fn wait_ready_tls_every(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    cert: &ClientCert<'_>,
    deadline: Duration,
    interval: Duration,
) -> Result<Client, PgConnError> {
    let tls = tls_connector(cert.ca_pem, Some((cert.cert_pem, cert.key_pem)))?;
    let start = std::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_sub(start.elapsed());
        let err = match connect_tls_with(&tls, host, port, user, dbname, remaining).await {
            Ok(client) => return Ok(client),
            Err(e) if e.is_terminal() => return Err(e),
            Err(e) => e,
        };
        let elapsed = start.elapsed();
        if elapsed + interval >= deadline {
            return Err(PgConnError::NotReady {
                target: target(user, host, port, dbname),
                waited: elapsed,
                attempts,
                last: Box::new(err),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn connect_tls_with(
    tls: &MakeRustlsConnect,
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    timeout: Duration,
) -> Result<Client, PgConnError> {
    let mut config = base_config(user, dbname, timeout);
    config.host(host).port(port).ssl_mode(SslMode::Require);
    let target = target(user, host, port, dbname);
    run_connect(&target, timeout, config.connect(tls.clone())).await
}

fn base_config(user: &str, dbname: &str, timeout: Duration) -> Config {
    let mut config = Config::new();
    config
        .user(user)
        .dbname(dbname)
        .application_name(APPLICATION_NAME);
    if !timeout.is_zero() {
        config.connect_timeout(timeout);
    }
    config
}

async fn run_connect<S, T>(
    target: &str,
    timeout: Duration,
    connect: impl std::future::Future<
        Output = Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
    >,
) -> Result<Client, PgConnError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(PgConnError::Timeout {
            target: target.to_owned(),
            after: timeout,
        }),
        Ok(Err(e)) => Err(PgConnError::classify(target, &e)),
        Ok(Ok((client, connection))) => {
            // The connection future drives the socket; it ends when the client
            // is dropped or the server goes away. Errors then surface on the
            // client's next call, so nothing is lost by ignoring them here.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

fn target(user: &str, host: &str, port: u16, dbname: &str) -> String {
    format!("{user}@{host}:{port}/{dbname}")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn chain_has_rustls_error(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return true;
        }
        let wraps_rustls = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if wraps_rustls {
            return true;
        }
        source = e.source();
    }
    false
}

fn chain_has_io_error(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// verify-ca: the server's chain must verify to our CA (validity period,
/// signatures, EKU), but the name the certificate was issued for is not
/// checked. rustls' WebPkiServerVerifier checks the chain first and the name
/// last, so a name-mismatch error means everything else passed.
#[derive(Debug)]
struct VerifyCa {
    inner: Arc<WebPkiServerVerifier>,
}

impl VerifyCa {
    fn new(roots: RootCertStore, provider: Arc<CryptoProvider>) -> Result<Self, PgConnError> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| PgConnError::TlsConfig(format!("server verifier: {e}")))?;
        Ok(VerifyCa { inner })
    }
}

impl ServerCertVerifier for VerifyCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{issue_instance_certs, InstanceCerts};
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
    const PG_USER: &str = "pgtest";
    const T: Duration = Duration::from_secs(5);

    fn certs_for(label: &str, names: &[&str]) -> InstanceCerts {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        issue_instance_certs(label, &names, "draupnir", Duration::from_secs(86_400)).unwrap()
    }

    fn verify(
        ca_pem: &str,
        cert_pem: &str,
        name: &str,
    ) -> (Result<(), rustls::Error>, Result<(), rustls::Error>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let v = VerifyCa::new(roots, provider).unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let ours = v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(|_| ());
        let strict = v
            .inner
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(|_| ());
        (ours, strict)
    }

    #[test]
    fn verify_ca_ignores_name_but_not_issuer() {
        let a = certs_for("a", &["localhost"]);
        let b = certs_for("b", &["localhost"]);
        // Right CA, right name.
        let (ours, strict) = verify(&a.ca_cert_pem, &a.server_cert_pem, "localhost");
        assert!(ours.is_ok() && strict.is_ok());
        // Right CA, wrong name: strict verifier refuses, verify-ca accepts.
        let (ours, strict) = verify(&a.ca_cert_pem, &a.server_cert_pem, "elsewhere.example");
        assert!(ours.is_ok(), "{ours:?}");
        assert!(strict.is_err());
        let (ours, _) = verify(&a.ca_cert_pem, &a.server_cert_pem, "10.1.2.3");
        assert!(ours.is_ok(), "{ours:?}");
        // Wrong CA: refused whatever the name.
        let (ours, _) = verify(&a.ca_cert_pem, &b.server_cert_pem, "localhost");
        assert!(
            matches!(
                ours,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{ours:?}"
        );
        // A client certificate (ClientAuth EKU only) is not a server cert.
        let (ours, _) = verify(&a.ca_cert_pem, &a.client_cert_pem, "draupnir");
        assert!(ours.is_err(), "{ours:?}");
    }

    #[test]
    fn bad_pem_is_tls_config_error() {
        let a = certs_for("a", &["localhost"]);
        for (ca, client) in [
            ("", None),
            ("garbage", None),
            (
                a.ca_cert_pem.as_str(),
                Some(("", a.client_key_pem.expose().as_str())),
            ),
            (
                a.ca_cert_pem.as_str(),
                Some((a.client_cert_pem.as_str(), "")),
            ),
            // Key does not belong to the certificate.
            (
                a.ca_cert_pem.as_str(),
                Some((
                    a.client_cert_pem.as_str(),
                    a.server_key_pem.expose().as_str(),
                )),
            ),
        ] {
            match tls_connector(ca, client) {
                Err(PgConnError::TlsConfig(_)) => {}
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("accepted bad PEM (ca={ca:?})"),
            }
        }
    }

    #[tokio::test]
    async fn connect_to_closed_port_is_unreachable() {
        let port = free_port();
        let e = connect_plain("127.0.0.1", port, "x", "x", T)
            .await
            .unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        let a = certs_for("a", &["localhost"]);
        let cert = ClientCert {
            ca_pem: &a.ca_cert_pem,
            cert_pem: &a.client_cert_pem,
            key_pem: a.client_key_pem.expose(),
        };
        let start = Instant::now();
        let e = wait_ready_tls(
            "127.0.0.1",
            port,
            "x",
            "x",
            &cert,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        match &e {
            PgConnError::NotReady { attempts, last, .. } => {
                assert!(*attempts > 1);
                assert!(matches!(**last, PgConnError::Connect { .. }), "{last}");
            }
            other => panic!("{other}"),
        }
        assert!(!e.to_string().contains('\n'));
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn pg_ids() -> (u32, u32) {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, PG_USER]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if id("-u").is_none() {
            let st = Command::new("useradd")
                .args(["-r", "-M", "-s", "/usr/sbin/nologin", PG_USER])
                .status()
                .unwrap();
            // Another test process may have created it concurrently.
            assert!(st.success() || id("-u").is_some(), "useradd failed");
        }
        (id("-u").unwrap(), id("-g").unwrap())
    }

    /// A temporary PostgreSQL cluster; stops the server and removes the
    /// directory on drop, also when the test panics.
    struct Cluster {
        root: PathBuf,
        data: PathBuf,
        uid: u32,
        gid: u32,
        port: u16,
        child: Option<Child>,
    }

    impl Cluster {
        fn init() -> Cluster {
            let (uid, gid) = pg_ids();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let root = PathBuf::from(format!("/tmp/draupnir-pg-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&root).unwrap();
            let data = root.join("data");
            let cluster = Cluster {
                root,
                data,
                uid,
                gid,
                port: free_port(),
                child: None,
            };
            chown(&cluster.root, Some(uid), Some(gid)).unwrap();
            let out = cluster
                .pg_command("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-U", "postgres", "--auth=trust", "-N", "-E", "UTF8"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cluster
        }

        fn pg_command(&self, bin: &str) -> Command {
            let mut cmd = Command::new(format!("{PG_BIN}/{bin}"));
            cmd.uid(self.uid)
                .gid(self.gid)
                .current_dir(&self.root)
                .env("LC_ALL", "C");
            cmd
        }

        fn write(&self, name: &str, body: &str, mode: u32) {
            let p = self.data.join(name);
            std::fs::write(&p, body).unwrap();
            chown(&p, Some(self.uid), Some(self.gid)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn start(&mut self) {
            assert!(self.child.is_none());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join("postgres.log"))
                .unwrap();
            let child = self
                .pg_command("postgres")
                .arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "ssl=on"])
                .args(["-c", "ssl_cert_file=server.crt"])
                .args(["-c", "ssl_key_file=server.key"])
                .args(["-c", "ssl_ca_file=root.crt"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", self.data.display()))
                .args(["-c", "fsync=off"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            self.child = Some(child);
        }

        fn stop(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            self.stop();
            if std::thread::panicking() {
                eprintln!("--- postgres log ---\n{}", self.log());
            }
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    async fn current_user(client: &Client) -> String {
        client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn real_postgres_cert_only_access() {
        let mut pg = Cluster::init();
        let certs = certs_for("pgconn-test", &["localhost", "127.0.0.1"]);
        pg.write("server.crt", &certs.server_cert_pem, 0o644);
        pg.write("server.key", certs.server_key_pem.expose(), 0o600);
        pg.write("root.crt", &certs.ca_cert_pem, 0o644);
        pg.write(
            "pg_hba.conf",
            "local all all trust\nhostssl all draupnir 127.0.0.1/32 cert map=draupnir_cert\n",
            0o600,
        );
        pg.write("pg_ident.conf", "draupnir_cert draupnir draupnir\n", 0o600);

        // First start: create the role over the Unix socket.
        let spawned = Instant::now();
        pg.start();
        let admin = loop {
            match connect_unix(&pg.data, pg.port, "postgres", "postgres", T).await {
                Ok(c) => break c,
                Err(_) if spawned.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("unix socket never came up: {e}"),
            }
        };
        eprintln!("unix socket ready {:?} after spawn", spawned.elapsed());
        admin
            .batch_execute("CREATE ROLE draupnir LOGIN NOSUPERUSER")
            .await
            .unwrap();
        assert_eq!(current_user(&admin).await, "postgres");
        drop(admin);

        // Restart so that wait_ready_tls is timed from a cold spawn.
        pg.stop();
        let cert = ClientCert {
            ca_pem: &certs.ca_cert_pem,
            cert_pem: &certs.client_cert_pem,
            key_pem: certs.client_key_pem.expose(),
        };
        let spawned = Instant::now();
        pg.start();
        let client = wait_ready_tls(
            "127.0.0.1",
            pg.port,
            "draupnir",
            "postgres",
            &cert,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("wait_ready_tls: {e}"));
        eprintln!(
            "wait_ready_tls succeeded {:?} after spawning postgres",
            spawned.elapsed()
        );
        assert_eq!(current_user(&client).await, "draupnir");
        let ssl: bool = client
            .query_one(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl);
        drop(client);

        // Same again through connect_tls, hot.
        let t = Instant::now();
        let c = connect_tls(
            "127.0.0.1",
            pg.port,
            "draupnir",
            "postgres",
            &certs.ca_cert_pem,
            Some((&certs.client_cert_pem, certs.client_key_pem.expose())),
            T,
        )
        .await
        .unwrap();
        eprintln!("hot connect_tls took {:?}", t.elapsed());
        assert_eq!(current_user(&c).await, "draupnir");
        drop(c);

        // No client certificate: refused by the server.
        let e = connect_tls(
            "127.0.0.1",
            pg.port,
            "draupnir",
            "postgres",
            &certs.ca_cert_pem,
            None,
            T,
        )
        .await
        .unwrap_err();
        eprintln!("no client cert: {e}");
        assert!(e.is_auth_refused(), "{e}");
        assert!(!e.to_string().contains('\n'));

        // Client certificate but as another user: refused.
        let e = connect_tls(
            "127.0.0.1",
            pg.port,
            "postgres",
            "postgres",
            &certs.ca_cert_pem,
            Some((&certs.client_cert_pem, certs.client_key_pem.expose())),
            T,
        )
        .await
        .unwrap_err();
        eprintln!("cert as postgres: {e}");
        assert!(e.is_auth_refused(), "{e}");

        // Plain TCP: refused.
        let e = connect_plain("127.0.0.1", pg.port, "draupnir", "postgres", T)
            .await
            .unwrap_err();
        eprintln!("plain tcp: {e}");
        assert!(e.is_auth_refused(), "{e}");
        assert!(
            e.server_message().unwrap().contains("no pg_hba.conf entry"),
            "{e}"
        );

        // Another instance's client certificate: the server does not trust it.
        let other = certs_for("other", &["localhost", "127.0.0.1"]);
        let e = connect_tls(
            "127.0.0.1",
            pg.port,
            "draupnir",
            "postgres",
            &certs.ca_cert_pem,
            Some((&other.client_cert_pem, other.client_key_pem.expose())),
            T,
        )
        .await
        .unwrap_err();
        eprintln!("foreign client cert: {e}");
        assert!(!e.is_unreachable(), "{e}");

        // Another instance's CA: we do not trust the server.
        let e = connect_tls(
            "127.0.0.1",
            pg.port,
            "draupnir",
            "postgres",
            &other.ca_cert_pem,
            Some((&certs.client_cert_pem, certs.client_key_pem.expose())),
            T,
        )
        .await
        .unwrap_err();
        eprintln!("foreign CA: {e}");
        assert!(matches!(e, PgConnError::Tls { .. }), "{e}");

        // wait_ready_tls gives up at once on an auth refusal.
        let t = Instant::now();
        let e = wait_ready_tls(
            "127.0.0.1",
            pg.port,
            "postgres",
            "postgres",
            &cert,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(e.is_auth_refused(), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));

        // Unix socket as postgres still works.
        let c = connect_unix(&pg.data, pg.port, "postgres", "postgres", T)
            .await
            .unwrap();
        assert_eq!(current_user(&c).await, "postgres");
        drop(c);
    }
}
