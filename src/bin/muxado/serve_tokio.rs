//! `muxado serve --driver tokio`: the echo and sink servers of
//! [`crate::serve`] on the tokio driver (`muxado::tokio`), for machines
//! where io_uring is blocked (a container's seccomp profile,
//! `kernel.io_uring_disabled`). The bench's tokio-based servers (ours and
//! the peers') serve their streams with [`serve_stream`] too, so that every
//! tokio system echoes and sinks the same way.

use std::net::SocketAddr;
use std::time::Duration;

use muxado::tokio::Session;
use muxado::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::{Mode, TAG_SINK};
use crate::serve::{BufPool, BUF_SIZE};

/// Runs `muxado serve` on a multi-thread tokio runtime of `workers` threads
/// until the process is stopped; an error if the runtime or the listener
/// cannot be set up.
pub fn serve(listen: SocketAddr, mode: Mode, workers: usize, config: Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("muxado-serve")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        tracing::info!(
            "muxado serve: {mode:?} on {listen} with {workers} tokio worker thread(s) \
             (the tokio driver)"
        );
        muxado_server(listener, mode, config).await;
        Ok(())
    })
}

/// Accepts connections forever, running a muxado server session (tokio
/// driver) on each and serving every stream in its own task.
pub async fn muxado_server(listener: tokio::net::TcpListener, mode: Mode, config: Config) {
    let pool = BufPool::default();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of fds, say: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let session = Session::server(tcp, config.clone());
        let pool = pool.clone();
        tokio::spawn(async move {
            while let Ok(stream) = session.accept().await {
                tokio::spawn(serve_stream(stream, mode, pool.clone()));
            }
        });
    }
}

/// echo/sink over one tokio stream, with a buffer from the server's pool.
/// The sink reads into that buffer too: `AsyncRead` has no way to count
/// bytes in place (as the engine's `read_with` and multishot sinks do), and
/// every tokio system of the bench sinks this same way.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut mode: Mode,
    pool: BufPool,
) {
    if mode == Mode::Tagged {
        match s.read_u8().await {
            Ok(TAG_SINK) => mode = Mode::Sink,
            Ok(_) => mode = Mode::Echo,
            Err(_) => return,
        }
    }
    let mut pooled = pool.take(true);
    let buf = &mut pooled.buf[..BUF_SIZE];
    let mut total = 0u64;
    loop {
        match s.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if mode == Mode::Echo
                    && (s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err())
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    if mode == Mode::Sink && s.write_all(&total.to_be_bytes()).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
}
