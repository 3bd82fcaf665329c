//! JSON RPC over muxado over TCP, on the io_uring engine driver.
//!
//! The same RPC as `json_rpc` (one call per stream: request, FIN, answer,
//! FIN), served and called on one engine core over loopback TCP.
//! Run it with `cargo run --example json_rpc_engine`; `cargo test` runs it too.

#[path = "shared/rpc.rs"]
mod rpc;

use muxado::engine::{
    self,
    net::{TcpListener, TcpStream},
};
use muxado::{Config, Session};
use rpc::{Request, Response};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Answers every stream of `session`, each in a task of its own.
async fn serve(session: Session) {
    while let Ok(mut stream) = session.accept().await {
        engine::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) if request.len() + n <= rpc::MAX_REQUEST => {
                        request.extend_from_slice(&chunk[..n])
                    }
                    _ => {
                        let _ = stream.reset(muxado::ErrorCode::StreamCancelled);
                        return;
                    }
                }
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
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = engine::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        serve(Session::server(tcp, Config::default())).await;
        std::io::Result::Ok(())
    });
    let session = Session::client(TcpStream::connect(addr).await?, Config::default());
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
    server.await?;
    Ok(answers)
}

fn main() -> Result<()> {
    engine::block_on(demo())??;
    Ok(())
}

#[test]
fn json_rpc_over_tcp_on_the_engine() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = engine::block_on(async { demo().await.map_err(|e| e.to_string()) });
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let answers = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the example hung or panicked")
        .expect("io_uring engine available")
        .expect("the example failed");
    let expected = rpc::calls();
    assert_eq!(answers.len(), expected.len());
    for ((req, got), (_, want)) in answers.iter().zip(&expected) {
        assert_eq!(got, want, "answer to {req:?}");
    }
}
