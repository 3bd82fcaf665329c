//! Helpers of the transport tests: throw-away certificates (made at run time
//! with rcgen, never checked in), temp dirs, a checksummed many-stream echo
//! between two of our sessions, and a time bound for every test.

#![allow(dead_code)] // not every test binary uses every helper

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use muxado::engine;
use muxado::engine::net::{TcpListener, TcpStream};
use muxado::transport::{TlsClientConfig, TlsServerConfig, TlsStream};
use muxado::{ErrorCode, Session, Stream};

/// Every test fails instead of hanging once this much time has passed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `f` on an engine core of its own thread; panics (fails the test) if it
/// panics or if it has not finished within [`TEST_TIMEOUT`].
pub fn run_bounded<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine::block_on(f()).expect("io_uring engine available")
            }));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(TEST_TIMEOUT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("timed out after {TEST_TIMEOUT:?} (a hang)"),
    }
}

/// Runs `f` in a thread of its own; panics (fails the test) if it panics or
/// has not finished within [`TEST_TIMEOUT`].
pub fn thread_bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(TEST_TIMEOUT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("timed out after {TEST_TIMEOUT:?} (a hang)"),
    }
}

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "muxado-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate it signed, for "localhost" and 127.0.0.1.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so that two test CAs are told apart by name.
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "muxado test CA {} {}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client and a server TLS stream of ours over loopback TCP, with this
    /// certificate, handshakes done; `client_tcp` may set options on the
    /// client's socket first. On an engine core.
    pub async fn tls_pair(&self, client_tcp: impl FnOnce(&TcpStream)) -> (TlsStream, TlsStream) {
        let server_cfg =
            TlsServerConfig::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).unwrap();
        let client_cfg = TlsClientConfig::from_ca_pem(self.ca_pem.as_bytes()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(tcp, &server_cfg).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        client_tcp(&tcp);
        let client = TlsStream::connect(tcp, &client_cfg, "localhost")
            .await
            .unwrap();
        (client, server.await)
    }

    /// Writes ca.pem, cert.pem and key.pem into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca = dir.join("ca.pem");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (ca, cert, key)
    }
}

/// SplitMix64, for sizes and bytes.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes stream `i` of a run with `seed` carries: a length in
/// `0..=max_len` and a pattern no two streams share.
pub fn payload(seed: u64, i: u64, max_len: usize) -> Vec<u8> {
    let len = (mix(seed ^ (i << 32)) % (max_len as u64 + 1)) as usize;
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let w = mix(x).to_le_bytes();
        let n = w.len().min(len - out.len());
        out.extend_from_slice(&w[..n]);
    }
    out
}

/// FNV-1a: the checksum both ends compare.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Echoes every stream `session` accepts until the session ends: reads to the
/// peer's FIN, writes it all back, FIN (a half-close each way).
pub fn spawn_echo(session: Session) -> engine::JoinHandle<()> {
    engine::spawn(async move {
        while let Ok(mut s) = session.accept().await {
            engine::spawn(async move {
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.expect("echo read");
                s.write_all(&data).await.expect("echo write");
                s.close_write().expect("echo FIN");
            });
        }
    })
}

/// Writes `data` to `s`, half-closes, and reads the echo back to the peer's
/// FIN; checks the length, the checksum and every byte. (The echo reads to
/// the end before it answers, so writing first cannot stall on the window.)
pub async fn echo_one(mut s: Stream, data: Vec<u8>) {
    let id = s.id();
    s.write_all(&data).await.expect("write");
    s.close_write().expect("FIN");
    let mut back = Vec::with_capacity(data.len());
    s.read_to_end(&mut back).await.expect("read the echo");
    assert_eq!(back.len(), data.len(), "stream {id}: echoed length");
    assert_eq!(checksum(&back), checksum(&data), "stream {id}: checksum");
    assert!(back == data, "stream {id}: echoed bytes differ");
}

/// Opens `n` streams on `session` at once, each echoing its own payload.
pub async fn echo_many(session: &Session, n: u64, seed: u64, max_len: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = session.open().expect("open");
        tasks.push(engine::spawn(echo_one(s, payload(seed, i, max_len))));
    }
    for t in tasks {
        t.await;
    }
}

/// Both sides open streams at once and echo the other's: every byte checked.
pub async fn echo_both_ways(client: &Session, server: &Session, seed: u64) {
    let e1 = spawn_echo(client.clone());
    let e2 = spawn_echo(server.clone());
    let c = client.clone();
    let s = server.clone();
    let from_client = engine::spawn(async move { echo_many(&c, 40, seed, 256 * 1024).await });
    let from_server = engine::spawn(async move { echo_many(&s, 40, seed ^ 1, 256 * 1024).await });
    from_client.await;
    from_server.await;
    client.close().unwrap();
    let end = server.wait().await;
    assert_eq!(
        end.remote.as_ref().map(|r| r.0),
        Some(ErrorCode::NoError),
        "the client's GOAWAY crossed the transport: {end:?}"
    );
    e1.await;
    e2.await;
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
