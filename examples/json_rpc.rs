//! JSON RPC over muxado over TLS, on the tokio driver.
//!
//! A server accepts TLS connections (a self-signed certificate for
//! "localhost", made at start by rcgen), runs a muxado server session on each,
//! and answers every stream's JSON request. A client connects, opens one
//! stream per call, writes the request, half-closes and reads the answer.
//! Run it with `cargo run --example json_rpc`; `cargo test` runs it too.

#[path = "shared/rpc.rs"]
mod rpc;

use std::io;
use std::sync::Arc;

use muxado::tokio::Session;
use muxado::Config;
use rpc::{Request, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A server config with a fresh self-signed certificate, and a client config
/// that trusts it (and nothing else).
fn tls() -> Result<(TlsAcceptor, TlsConnector)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    // rustls' default provider (aws-lc-rs), as the library uses.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    ))
}

/// Answers every stream of `session`, each in a task of its own.
async fn serve(session: Session) {
    while let Ok(mut stream) = session.accept().await {
        tokio::spawn(async move {
            let mut request = Vec::new();
            let read = (&mut stream)
                .take(rpc::MAX_REQUEST as u64 + 1)
                .read_to_end(&mut request)
                .await;
            if read.is_err() || request.len() > rpc::MAX_REQUEST {
                let _ = stream.reset(muxado::ErrorCode::StreamCancelled);
                return;
            }
            let _ = stream.write_all(&rpc::answer(&request)).await;
            let _ = stream.close_write();
        });
    }
}

/// One call: a stream, the request, FIN, the answer until the server's FIN.
async fn call(session: &Session, request: &Request) -> Result<Response> {
    let mut stream = session.open()?;
    stream.write_all(&serde_json::to_vec(request)?).await?;
    stream.close_write()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(serde_json::from_slice(&answer)?)
}

/// Starts the server on a loopback port, makes every call of [`rpc::calls`]
/// from a client, and returns the answers.
async fn demo() -> Result<Vec<(Request, Response)>> {
    let (acceptor, connector) = tls()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = acceptor.accept(tcp).await?;
        serve(Session::server(tls, Config::default())).await;
        io::Result::Ok(())
    });

    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let session = Session::client(tls, Config::default());
    let mut answers = Vec::new();
    for (request, _) in rpc::calls() {
        let response = call(&session, &request).await?;
        println!(
            "{} -> {}",
            serde_json::to_string(&request)?,
            serde_json::to_string(&response)?
        );
        answers.push((request, response));
    }
    session.close()?;
    server.await??;
    Ok(answers)
}

#[tokio::main]
async fn main() -> Result<()> {
    demo().await?;
    Ok(())
}

#[test]
fn json_rpc_over_tls_on_the_tokio_driver() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answers = rt
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(30), demo()).await })
        .expect("the example hung")
        .expect("the example failed");
    let expected = rpc::calls();
    assert_eq!(answers.len(), expected.len());
    for ((req, got), (_, want)) in answers.iter().zip(&expected) {
        assert_eq!(got, want, "answer to {req:?}");
    }
}
