//! What TLS is set up with: certificates and keys from PEM, trust anchors,
//! the handshake's time limit, and the errors that name what went wrong.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a handshake may take unless the configuration says otherwise:
/// a peer that connects and says nothing must not hold a task forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why setting up TLS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("reading the {what} from {path}: {source}")]
    Pem {
        /// What the file should hold ("certificate chain", "private key", "CA certificates").
        what: &'static str,
        /// The file (or "(in memory)").
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// A PEM file was readable but held none of what was asked for.
    #[error("no {what} found in {path}")]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file (or "(in memory)").
        path: PathBuf,
    },
    /// rustls refused the configuration (a key that does not match, a CA
    /// certificate that does not parse, ...).
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// The name to verify the server's certificate against is no valid DNS
    /// name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The handshake failed: a certificate the other side could not verify,
    /// an alert the peer sent, a protocol error.
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The handshake did not finish in time (see
    /// [`TlsServerConfig::with_handshake_timeout`]).
    #[error("TLS handshake failed: no answer within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer closed the connection before the handshake finished.
    #[error("TLS handshake failed: the peer closed the connection")]
    HandshakeEof,
    /// The socket failed during the handshake.
    #[error("TLS handshake failed: {0}")]
    Io(#[source] io::Error),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        match e {
            TlsError::Io(e) => e,
            TlsError::HandshakeEof => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            TlsError::HandshakeTimeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            TlsError::Pem { .. } | TlsError::Empty { .. } | TlsError::ServerName(_) => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            _ => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// rustls' default provider, aws-lc-rs: its AES-GCM uses the wide vector
/// units (VAES, AVX-512) where the CPU has them, which on the machine of
/// perf/ moves TLS bulk faster than *ring*'s, and it offers the
/// post-quantum hybrid key exchange (X25519MLKEM768) first. It builds with a
/// C compiler alone (no cmake) on Linux.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn in_memory() -> PathBuf {
    PathBuf::from("(in memory)")
}

/// Every certificate of a PEM source; at least one.
fn certs(
    iter: Result<impl Iterator<Item = Result<CertificateDer<'static>, pem::Error>>, pem::Error>,
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = iter
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key(
    r: Result<PrivateKeyDer<'static>, pem::Error>,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    r.map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::Empty {
            what: WHAT,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what: WHAT,
            path: path.to_owned(),
            source,
        },
    })
}

/// What a TLS server presents: its certificate chain and key (no client
/// certificates asked for). Cheap to clone; share one among connections.
#[derive(Clone)]
pub struct TlsServerConfig {
    pub(super) inner: Arc<rustls::ServerConfig>,
    pub(super) handshake_timeout: Option<Duration>,
}

impl TlsServerConfig {
    /// Reads the certificate chain (leaf first) and the private key (PKCS#8,
    /// PKCS#1 or SEC1) from PEM files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<TlsServerConfig, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key_file.as_ref());
        let chain = certs(
            CertificateDer::pem_file_iter(cert_path),
            "certificate chain",
            cert_path,
        )?;
        let key = key(PrivateKeyDer::from_pem_file(key_path), key_path)?;
        Self::from_der(chain, key)
    }

    /// Like [`Self::from_pem_files`], from PEM text in memory.
    pub fn from_pem(cert_chain: &[u8], key_pem: &[u8]) -> Result<TlsServerConfig, TlsError> {
        let chain = certs(
            Ok(CertificateDer::pem_slice_iter(cert_chain)),
            "certificate chain",
            &in_memory(),
        )?;
        let key = key(PrivateKeyDer::from_pem_slice(key_pem), &in_memory())?;
        Self::from_der(chain, key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsServerConfig, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        Ok(TlsServerConfig::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by the caller (client
    /// authentication, ALPN, another crypto provider, ...).
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> TlsServerConfig {
        TlsServerConfig {
            inner: config,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// How long [`TlsStream::accept`](super::TlsStream::accept) waits for the handshake to finish
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set; `None`: no limit).
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> TlsServerConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.inner
    }
}

/// What a TLS client trusts: the CA certificates its server's chain must end
/// in. Cheap to clone; share one among connections.
#[derive(Clone)]
pub struct TlsClientConfig {
    pub(super) inner: Arc<rustls::ClientConfig>,
    pub(super) handshake_timeout: Option<Duration>,
}

impl TlsClientConfig {
    /// Trusts the CA certificates of a PEM file (one or more).
    pub fn from_ca_pem_file(ca: impl AsRef<Path>) -> Result<TlsClientConfig, TlsError> {
        let path = ca.as_ref();
        let cas = certs(CertificateDer::pem_file_iter(path), "CA certificates", path)?;
        Self::from_cas(cas)
    }

    /// Like [`Self::from_ca_pem_file`], from PEM text in memory.
    pub fn from_ca_pem(ca: &[u8]) -> Result<TlsClientConfig, TlsError> {
        let cas = certs(
            Ok(CertificateDer::pem_slice_iter(ca)),
            "CA certificates",
            &in_memory(),
        )?;
        Self::from_cas(cas)
    }

    fn from_cas(cas: Vec<CertificateDer<'static>>) -> Result<TlsClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(TlsError::Config)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClientConfig::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration built by the caller.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> TlsClientConfig {
        TlsClientConfig {
            inner: config,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// How long [`TlsStream::connect`](super::TlsStream::connect) waits for the handshake to finish
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set; `None`: no limit).
    pub fn with_handshake_timeout(mut self, timeout: Option<Duration>) -> TlsClientConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.inner
    }
}
