//! Certificates for the TLS tunnel tests, made at run time by rcgen (never
//! checked in): a CA and a server certificate it signed for "localhost"
//! and 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files of one CA and the server certificate it signed.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA and server certificate, written into `dir` under `tag`.
    pub fn new(dir: &Path, tag: &str) -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so that two test CAs are told apart.
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "muxado tunnel test CA {tag} {} {}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let pki = Pki {
            ca: dir.join(format!("{tag}-ca.pem")),
            cert: dir.join(format!("{tag}-cert.pem")),
            key: dir.join(format!("{tag}-key.pem")),
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write CA");
        std::fs::write(&pki.cert, cert.pem()).expect("write certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }
}
