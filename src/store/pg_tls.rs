//! TLS to PostgreSQL: what the store URL's `sslmode` and `sslrootcert` ask
//! for, and the rustls connector (with the ring provider) that does it, for
//! the pool and the listener alike. tokio-postgres knows only `disable`,
//! `prefer` and `require`, so both parameters are read here and taken out of
//! the URL, in either of its forms (`postgres://…?sslmode=…&sslrootcert=…`
//! or `host=… sslmode=…`); tokio-postgres is handed the rest.
//!
//! The modes are libpq's:
//! - `disable`: never TLS.
//! - `prefer`: TLS when the server offers it, in clear when it does not.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, and the server's certificate must chain to a root of
//!   `sslrootcert`; the host name is not checked. It needs a CA file:
//!   against the system's roots, any publicly issued certificate would pass.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host
//!   connected to (a DNS name or an IP address of its subjectAltName).
//!
//! `prefer` and `require` do not check the certificate, unless `sslrootcert`
//! is given: then, as with libpq, its chain is checked as `verify-ca` does.
//! A connection whose certificate is not checked still verifies the
//! handshake's signatures with the provider's algorithms, so the session is
//! at least with whoever holds the certificate's key.
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system`: the
//! system's trust store as rustls-native-certs finds it (on Debian
//! `/etc/ssl/certs/ca-certificates.crt`; `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! are honoured, as by OpenSSL), which, as libpq requires, only
//! `verify-full` may use. The system's store rather than a list compiled
//! into cedard, so that a CA the machine's administrator installed is
//! trusted and a distribution's updates apply.
//!
//! **The default**, when the URL names no `sslmode`: for a loopback host
//! (`localhost`, 127.0.0.0/8, `::1`) or a Unix socket, `prefer`; for any
//! other host, `verify-full`, against `sslrootcert` when given and the
//! system's roots otherwise. Nothing crosses a network in clear unless the
//! URL says so, and a connection in clear to a host that is not local
//! (`sslmode=disable`, or `prefer` with a server without TLS) is logged as
//! INSECURE at start ([`Connector::warn_if_clear`]).
//!
//! Client certificates (`sslcert`, `sslkey`, `sslpassword`) are refused
//! rather than ignored. Connections name themselves `application_name`
//! `cedard` unless the URL names them otherwise.
//!
//! This module knows nothing of cedard's tables, only of the connection.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use postgres::tls::MakeTlsConnect;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::OpenError;

/// How a connection uses TLS: the store URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, with the certificate's chain checked but not its name.
    VerifyCa,
    /// TLS, with the certificate's chain and name checked.
    VerifyFull,
}

impl Mode {
    /// Every mode, in the order messages list them.
    const ALL: [Mode; 5] = [
        Mode::Disable,
        Mode::Prefer,
        Mode::Require,
        Mode::VerifyCa,
        Mode::VerifyFull,
    ];

    /// The mode's name in a URL.
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, SettingError> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == value)
            .ok_or_else(|| SettingError::UnknownMode(value.to_owned()))
    }

    /// What tokio-postgres is told: every mode past `prefer` is a `require`
    /// to it, the certificate checks being the connector's.
    fn ssl_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roots a server's certificate is checked against: `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The system's trust store (`sslrootcert=system`).
    System,
}

/// A store URL whose TLS settings cannot be carried out.
#[derive(Debug, thiserror::Error)]
enum SettingError {
    #[error("`{shown}` is not a PostgreSQL URL: {reason}")]
    NotAUrl { shown: String, reason: String },
    #[error("sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    #[error("client certificates are not supported: remove `{0}` from the store URL")]
    ClientCertificate(String),
    #[error("sslmode=verify-ca needs sslrootcert, the file of the CA that signed the server's certificate: against the system's roots any publicly issued certificate would pass (use sslmode=verify-full for those)")]
    VerifyCaWithoutRoots,
    #[error("sslrootcert=system needs sslmode=verify-full, not sslmode={0}: against the system's roots, a certificate issued to anyone else would pass")]
    WeakSystemRoots(Mode),
    #[error("cannot read sslrootcert `{path}`: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sslrootcert `{path}` is not a PEM file of certificates: {reason}")]
    NotPem { path: PathBuf, reason: String },
    #[error("sslrootcert `{0}` holds no certificate")]
    Empty(PathBuf),
    #[error("sslrootcert `{path}` holds a certificate that cannot be a root: {reason}")]
    BadRoot { path: PathBuf, reason: String },
    #[error("sslrootcert=system: no root certificate was found on this machine{0}; install the distribution's ca-certificates, or set sslrootcert to the CA file")]
    NoSystemRoots(String),
    #[error("TLS settings for PostgreSQL: {0}")]
    Rustls(String),
}

impl From<SettingError> for OpenError {
    fn from(e: SettingError) -> Self {
        OpenError::Settings(e.to_string())
    }
}

/// What the store URL asks of TLS, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    mode: Mode,
    /// `None` where the certificate is not checked.
    roots: Option<Roots>,
    /// Whether every host is this machine (loopback or a Unix socket): the
    /// default mode, and whether clear text is worth a warning, follow.
    local: bool,
    /// The URL without its password, for messages.
    shown: String,
}

/// Opens TLS as the store URL asks, for every connection of the pool and
/// the listener's.
#[derive(Clone)]
pub struct Connector {
    inner: MakeRustlsConnect,
    settings: Arc<Settings>,
    /// The last connection of the pool's that failed, in full: the pool
    /// keeps only an error's message, and tokio-postgres keeps the cause
    /// (the handshake's, the server's) out of its message.
    failed: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Reads the store URL (`shown` is the same without its password): the
/// settings tokio-postgres is to connect with (its `sslmode` set from ours,
/// `application_name` `cedard` unless the URL names one), and the connector
/// that carries out the TLS part.
pub fn connector(url: &str, shown: &str) -> Result<(tokio_postgres::Config, Connector), OpenError> {
    let (mut config, settings) = settings(url, shown)?;
    config.ssl_mode(settings.mode.ssl_mode());
    if config.get_application_name().is_none() {
        config.application_name("cedard");
    }
    let inner = MakeRustlsConnect::new(client_config(&settings)?);
    Ok((
        config,
        Connector {
            inner,
            settings: Arc::new(settings),
            failed: Arc::default(),
        },
    ))
}

impl Connector {
    /// Logs, loudly, a connection in clear (`conn`, the first one made) to a
    /// host that is not this machine's, and a certificate left unchecked.
    /// Under `prefer` the server is asked whether `conn` is encrypted
    /// (`pg_stat_ssl`).
    pub fn warn_if_clear(&self, conn: &mut postgres::Client) {
        let s = &self.settings;
        if s.local {
            return;
        }
        let shown = &s.shown;
        match s.mode {
            Mode::Disable => tracing::warn!(
                "INSECURE: sslmode=disable: the directory, stored facts and credentials cross the network to `{shown}` in clear"
            ),
            Mode::Prefer => {
                let encrypted = conn
                    .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                    .and_then(|row| row.try_get::<_, bool>(0));
                match encrypted {
                    Ok(false) => tracing::warn!(
                        "INSECURE: sslmode=prefer and `{shown}` does not offer TLS: the directory, stored facts and credentials cross the network in clear"
                    ),
                    Ok(true) => {}
                    Err(e) => tracing::warn!(
                        "sslmode=prefer: cannot tell whether the connection to `{shown}` is encrypted ({e}); it may be in clear"
                    ),
                }
            }
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => {}
        }
        if matches!(s.mode, Mode::Prefer | Mode::Require) && s.roots.is_none() {
            tracing::warn!(
                "sslmode={}: the certificate of `{shown}` is not checked, so whoever is on the path to it can stand in for it; use sslmode=verify-full (with sslrootcert)",
                s.mode
            );
        }
    }

    /// The pool's error handler: it keeps each failed connection's error
    /// in full for [`Connector::explain`].
    pub fn error_handler(&self) -> Box<dyn r2d2::HandleError<postgres::Error>> {
        Box::new(Failures(self.failed.clone()))
    }

    /// Why the pool could not connect, in the store URL's words where TLS
    /// is why. `message` is the pool's; the last failed connection's error,
    /// in full, is kept after the explanation.
    pub fn explain(&self, message: &str) -> String {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let message = failed.as_deref().unwrap_or(message);
        let s = &self.settings;
        let why = if message.contains("UnknownIssuer") {
            Some(match &s.roots {
                Some(Roots::File(path)) => format!(
                    "the server's certificate is not signed by sslrootcert `{}`",
                    path.display()
                ),
                _ => "the server's certificate is not signed by a root this machine trusts (sslrootcert=system); set sslrootcert to the file of the CA that signed it".to_owned(),
            })
        } else if message.contains("not valid for name") || message.contains("NotValidForName") {
            Some(format!(
                "the server's certificate does not name the host cedard connected to, which sslmode={} requires",
                s.mode
            ))
        } else if message.contains("server does not support TLS") {
            Some(format!(
                "the server does not offer TLS and sslmode={}",
                s.mode
            ))
        } else if s.mode == Mode::Disable && message.contains("no encryption") {
            Some("the server refuses connections in clear and sslmode=disable".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => format!("{why} ({message})"),
            None => message.to_owned(),
        }
    }
}

/// Keeps the pool's last failed connection, in full.
#[derive(Debug)]
struct Failures(Arc<Mutex<Option<String>>>);

impl r2d2::HandleError<postgres::Error> for Failures {
    fn handle_error(&self, error: postgres::Error) {
        let mut full = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            full.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        // The pool tries again until its timeout: one line each time would
        // flood the log, and the reason ends in the error the start reports.
        tracing::debug!("cannot connect to PostgreSQL: {full}");
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(full);
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        // tokio-postgres asks for a connector for every connection, with an
        // empty host name for a Unix socket, where it never starts TLS (it
        // stops at "no hostname provided" first). rustls refuses an empty
        // name, which would fail every socket connection, so a name that is
        // never checked stands in.
        let name = if hostname.is_empty() {
            "localhost"
        } else {
            hostname
        };
        MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, name)
    }
}

/// The store URL's TLS parameters, and the URL without them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl Split {
    /// Takes `key` if it is a TLS parameter read here: `false` when it is
    /// not, and it stays in the URL.
    fn take(&mut self, key: &str, value: String) -> Result<bool, SettingError> {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(SettingError::ClientCertificate(key.to_owned()))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Takes the TLS parameters out of `url`, in either form tokio-postgres
/// reads (and with the same grammar).
fn split(url: &str) -> Result<Split, SettingError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)
    } else {
        split_key_values(url)
    }
}

fn split_url(url: &str) -> Result<Split, SettingError> {
    let mut out = Split::default();
    let Some((base, query)) = url.split_once('?') else {
        out.rest = url.to_owned();
        return Ok(out);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !out.take(&decode(key), decode(value))? {
            kept.push(pair);
        }
    }
    out.rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(out)
}

fn split_key_values(s: &str) -> Result<Split, SettingError> {
    let mut out = Split::default();
    // A string tokio-postgres cannot read either goes to it whole, so that
    // its message says what is wrong.
    let Some(params) = key_values(s) else {
        out.rest = s.to_owned();
        return Ok(out);
    };
    let mut kept = Vec::new();
    for (key, value, span) in params {
        if !out.take(key, value)? {
            kept.push(&s[span]);
        }
    }
    out.rest = kept.join(" ");
    Ok(out)
}

/// The `key=value` pairs of a libpq connection string, with their values
/// unquoted and unescaped and where each pair lies in `s`; `None` when `s`
/// is not one.
fn key_values(s: &str) -> Option<Vec<(&str, String, Range<usize>)>> {
    fn skip_ws(it: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    }
    let mut it = s.char_indices().peekable();
    let mut out = Vec::new();
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Some(out);
        };
        let mut key_end = start;
        while let Some((i, c)) = it.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key_end = i + c.len_utf8();
        }
        if key_end == start {
            return None;
        }
        skip_ws(&mut it);
        it.next_if(|&(_, c)| c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        let mut end = None;
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next()? {
                    (i, '\'') => {
                        end = Some(i + 1);
                        break;
                    }
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((i, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                end = Some(i + c.len_utf8());
                if c != '\\' {
                    value.push(c);
                } else if let Some((j, escaped)) = it.next() {
                    value.push(escaped);
                    end = Some(j + escaped.len_utf8());
                }
            }
        }
        out.push((&s[start..key_end], value, start..end?));
    }
}

/// Whether every host of `config` is this machine: a loopback name or
/// address, or a Unix socket.
fn is_local(config: &tokio_postgres::Config) -> bool {
    let host_is_local = |host: &Host| match host {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    };
    config.get_hosts().iter().all(host_is_local)
        && config
            .get_hostaddrs()
            .iter()
            .all(|ip| ip.to_canonical().is_loopback())
}

/// Reads `url` into tokio-postgres's settings (without ours) and ours, with
/// the defaults filled in (see the module).
fn settings(url: &str, shown: &str) -> Result<(tokio_postgres::Config, Settings), SettingError> {
    let split = split(url)?;
    let config: tokio_postgres::Config = split.rest.parse().map_err(|e| SettingError::NotAUrl {
        shown: shown.to_owned(),
        reason: format!("{e}"),
    })?;
    let local = is_local(&config);
    let roots = split.sslrootcert.map(|r| match r.as_str() {
        "system" => Roots::System,
        _ => Roots::File(PathBuf::from(r)),
    });
    let mode = match split.sslmode {
        Some(mode) => Mode::parse(&mode)?,
        None if roots == Some(Roots::System) || !local => Mode::VerifyFull,
        None => Mode::Prefer,
    };
    if roots == Some(Roots::System) && mode != Mode::VerifyFull {
        return Err(SettingError::WeakSystemRoots(mode));
    }
    let roots = match mode {
        Mode::Disable => None,
        Mode::VerifyCa if roots.is_none() => return Err(SettingError::VerifyCaWithoutRoots),
        Mode::VerifyFull => Some(roots.unwrap_or(Roots::System)),
        _ => roots,
    };
    Ok((
        config,
        Settings {
            mode,
            roots,
            local,
            shown: shown.to_owned(),
        },
    ))
}

/// The rustls settings for `settings`, with ring's algorithms.
fn client_config(settings: &Settings) -> Result<ClientConfig, SettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError::Rustls(e.to_string()))?;
    let config = match &settings.roots {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(load(roots)?), provider)
                    .build()
                    .map_err(|e| SettingError::Rustls(e.to_string()))?;
            if settings.mode == Mode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            }
        }
    };
    Ok(config.with_no_client_auth())
}

/// Reads `sslrootcert`.
fn load(roots: &Roots) -> Result<RootCertStore, SettingError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path).map_err(|source| SettingError::Unreadable {
                path: path.clone(),
                source,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SettingError::NotPem {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                store.add(cert).map_err(|e| SettingError::BadRoot {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            if store.is_empty() {
                return Err(SettingError::Empty(path.clone()));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                let detail = if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                };
                return Err(SettingError::NoSystemRoots(detail));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require` without `sslrootcert`: any certificate, but the
/// handshake's signatures are still verified, so the server holds the key
/// of the certificate it showed.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `prefer`/`require` with `sslrootcert`): webpki's checks
/// but the name's. webpki checks the name last, once the chain, validity
/// and usage are good, so a name mismatch is the only error let through.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (tokio_postgres::Config, Settings) {
        settings(url, url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn refused(url: &str) -> String {
        match settings(url, url) {
            Ok((_, s)) => panic!("{url} was accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_default_is_prefer_on_this_machine_and_verify_full_elsewhere() {
        let table: &[(&str, Mode, Option<Roots>)] = &[
            ("postgres://u@127.0.0.1:5432/db", Mode::Prefer, None),
            ("postgres://u@127.3.4.5/db", Mode::Prefer, None),
            ("postgres://u@localhost/db", Mode::Prefer, None),
            ("postgres://u@[::1]:5432/db", Mode::Prefer, None),
            ("host=/var/run/postgresql user=u", Mode::Prefer, None),
            (
                "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
                Mode::Prefer,
                None,
            ),
            (
                "postgres://u@db.example.com/db",
                Mode::VerifyFull,
                Some(Roots::System),
            ),
            (
                "host=10.0.0.5 user=u",
                Mode::VerifyFull,
                Some(Roots::System),
            ),
            (
                "postgres://u@localhost,db.example.com/db",
                Mode::VerifyFull,
                Some(Roots::System),
            ),
            (
                "postgres://u@db.example.com/db?sslrootcert=/etc/ca.pem",
                Mode::VerifyFull,
                Some(Roots::File("/etc/ca.pem".into())),
            ),
            (
                "postgres://u@localhost/db?sslrootcert=/etc/ca.pem",
                Mode::Prefer,
                Some(Roots::File("/etc/ca.pem".into())),
            ),
            (
                "postgres://u@localhost/db?sslrootcert=system",
                Mode::VerifyFull,
                Some(Roots::System),
            ),
        ];
        for (url, mode, roots) in table {
            let (_, s) = parsed(url);
            assert_eq!((s.mode, &s.roots), (*mode, roots), "{url}");
        }
    }

    #[test]
    fn explicit_modes_are_kept_and_their_roots_follow() {
        let table: &[(&str, Mode, Option<Roots>)] = &[
            (
                "postgres://u@db.example.com/db?sslmode=disable",
                Mode::Disable,
                None,
            ),
            (
                "postgres://u@db.example.com/db?sslmode=disable&sslrootcert=/ca.pem",
                Mode::Disable,
                None,
            ),
            (
                "postgres://u@db.example.com/db?sslmode=prefer",
                Mode::Prefer,
                None,
            ),
            (
                "postgres://u@db.example.com/db?sslmode=require",
                Mode::Require,
                None,
            ),
            (
                "postgres://u@db.example.com/db?sslmode=require&sslrootcert=/ca.pem",
                Mode::Require,
                Some(Roots::File("/ca.pem".into())),
            ),
            (
                "postgres://u@db.example.com/db?sslmode=verify-ca&sslrootcert=%2Fa%20b%2Fca.pem",
                Mode::VerifyCa,
                Some(Roots::File("/a b/ca.pem".into())),
            ),
            (
                "postgres://u@localhost/db?sslmode=verify-full",
                Mode::VerifyFull,
                Some(Roots::System),
            ),
            (
                "host=localhost sslmode = 'verify-full' sslrootcert='/a b/c\\'s.pem'",
                Mode::VerifyFull,
                Some(Roots::File("/a b/c's.pem".into())),
            ),
        ];
        for (url, mode, roots) in table {
            let (config, s) = parsed(url);
            assert_eq!((s.mode, &s.roots), (*mode, roots), "{url}");
            // tokio-postgres never saw our parameters.
            assert_eq!(config.get_ssl_mode(), SslMode::Prefer, "{url}");
        }
    }

    #[test]
    fn the_rest_of_the_url_reaches_tokio_postgres() {
        let (config, _) = parsed(
            "postgres://u:p%40ss@localhost:6543/db?sslmode=require&connect_timeout=7&application_name=mine",
        );
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_ports(), &[6543]);
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(7))
        );
        assert_eq!(config.get_application_name(), Some("mine"));

        let (config, s) = parsed(
            "host=localhost password='a b\\'c' sslmode=verify-full dbname=db sslrootcert=/x.pem",
        );
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(s.roots, Some(Roots::File("/x.pem".into())));

        let split = split("postgres://h/db?sslmode=require").expect("split");
        assert_eq!(split.rest, "postgres://h/db");
    }

    #[test]
    fn the_connection_is_named_cedard_unless_the_url_names_it() {
        let (config, _) =
            connector("postgres://u@localhost/db?sslmode=disable", "u").expect("connector");
        assert_eq!(config.get_application_name(), Some("cedard"));
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        let (config, _) = connector("host=localhost application_name=other sslmode=prefer", "u")
            .expect("connector");
        assert_eq!(config.get_application_name(), Some("other"));
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let message = refused("postgres://u@localhost/db?sslmode=verify-everything");
        assert!(message.contains("sslmode `verify-everything`"), "{message}");
        assert!(
            message.contains("disable, prefer, require, verify-ca, verify-full"),
            "{message}"
        );
        let message = refused("host=localhost sslmode=allow");
        assert!(message.contains("sslmode `allow`"), "{message}");
        for key in ["sslcert", "sslkey", "sslpassword"] {
            let message = refused(&format!("postgres://u@localhost/db?{key}=/x"));
            assert!(message.contains(&format!("`{key}`")), "{message}");
            assert!(message.contains("client certificates"), "{message}");
        }
        let message = refused("postgres://u@db.example.com/db?sslmode=verify-ca");
        assert!(message.contains("verify-ca needs sslrootcert"), "{message}");
        let message = refused("postgres://u@db.example.com/db?sslmode=require&sslrootcert=system");
        assert!(
            message.contains("sslrootcert=system needs sslmode=verify-full"),
            "{message}"
        );
    }

    #[test]
    fn an_unreadable_or_empty_sslrootcert_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let url = format!(
            "postgres://u@localhost/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        );
        let message = connector(&url, "u").expect_err("refused").to_string();
        assert!(
            message.contains(&format!("sslrootcert `{}`", missing.display())),
            "{message}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let url = format!(
            "postgres://u@localhost/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        );
        let message = connector(&url, "u").expect_err("refused").to_string();
        assert!(
            message.contains(&format!(
                "sslrootcert `{}` holds no certificate",
                empty.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn key_value_strings_are_read_as_tokio_postgres_reads_them() {
        let s = "host=h  port = 5 password='x y\\' z' a=\\ b";
        let pairs = key_values(s).expect("pairs");
        let got: Vec<(&str, &str, &str)> = pairs
            .iter()
            .map(|(k, v, span)| (*k, v.as_str(), &s[span.clone()]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("host", "h", "host=h"),
                ("port", "5", "port = 5"),
                ("password", "x y' z", "password='x y\\' z'"),
                ("a", " b", "a=\\ b"),
            ]
        );
        assert!(key_values("host='unterminated").is_none());
        assert!(key_values("=x").is_none());
        assert!(key_values("host").is_none());
    }
}
