//! `muxado serve`: echo and sink servers, over muxado sessions or plain TCP.
//!
//! echo: every byte read from a stream is written back; after the peer's FIN
//! the stream is half-closed. sink: read to the peer's FIN, then write the
//! byte count as a big-endian u64 and half-close.

use std::cell::RefCell;
use std::rc::Rc;

use muxado::engine::{self, net::TcpListener, net::TcpStream};
use muxado::{Config, Session, Stream};

/// What a server does with each stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Write back every byte; half-close after the peer's FIN.
    Echo,
    /// Count bytes to the peer's FIN, answer the count as a big-endian u64.
    Sink,
}

/// Accepts connections forever, running a muxado server session on each.
pub async fn muxado_server(listener: TcpListener, mode: Mode, config: Config) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("muxado serve: accept failed: {e}");
                engine::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let session = Session::server(tcp, config.clone());
        engine::spawn(async move {
            while let Ok(stream) = session.accept().await {
                engine::spawn(serve_stream(stream, mode));
            }
        });
    }
}

/// Size of the buffers streams are served with.
const BUF_SIZE: usize = 64 * 1024;

thread_local! {
    /// Buffers of finished streams, reused by the next ones on this core: a
    /// server taking many short streams should not allocate and zero 64 KiB
    /// for each (the TCP server below reuses its buffers the same way).
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this core's pool, returned to it on drop.
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take(zeroed: bool) -> PooledBuf {
        let mut buf = BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        if zeroed && buf.len() < BUF_SIZE {
            buf.resize(BUF_SIZE, 0);
        }
        PooledBuf(buf)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        BUFFERS.with(|b| {
            let mut pool = b.borrow_mut();
            if pool.len() < 1024 {
                pool.push(buf);
            }
        });
    }
}

async fn serve_stream(mut stream: Stream, mode: Mode) {
    let mut pooled = PooledBuf::take(true);
    let buf = &mut pooled.0[..BUF_SIZE];
    let mut total: u64 = 0;
    loop {
        match stream.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if mode == Mode::Echo && stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    if mode == Mode::Sink && stream.write_all(&total.to_be_bytes()).await.is_err() {
        return;
    }
    let _ = stream.close_write();
}

/// Accepts plain TCP connections forever and serves each as one stream: the
/// physical reference the muxado figures are compared with.
pub async fn tcp_server(listener: TcpListener, mode: Mode) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        engine::spawn(serve_tcp(Rc::new(tcp), mode));
    }
}

async fn serve_tcp(tcp: Rc<TcpStream>, mode: Mode) {
    let mut rx = tcp.recv_multishot();
    let mut total: u64 = 0;
    let mut pooled = PooledBuf::take(false);
    let mut out = std::mem::take(&mut pooled.0);
    loop {
        match rx.next().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if mode == Mode::Echo {
                    out.clear();
                    out.extend_from_slice(&chunk);
                    drop(chunk);
                    let (r, b) = tcp.send_all(out).await;
                    out = b;
                    if r.is_err() {
                        pooled.0 = out;
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                pooled.0 = out;
                return;
            }
        }
    }
    pooled.0 = out;
    if mode == Mode::Sink {
        let (r, _) = tcp.send_all(total.to_be_bytes().to_vec()).await;
        if r.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown_write();
}
