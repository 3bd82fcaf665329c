//! The driver hands received bytes to a waiting reader as it goes, instead of
//! reading a whole window ahead of it: on a current-thread runtime (where
//! task order is deterministic) an eager reader is given at most what one
//! turn of the driver reads, so a session's stream buffers stay small and
//! the bytes are copied out while still in the CPU's cache. Every byte is
//! checked. Bounded by a timeout.

use std::time::Duration;

use muxado::tokio::Session;
use muxado::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What one turn of the driver reads at most once a reader is waiting:
/// the hand-off threshold (256 KiB) plus one read chunk (64 KiB).
const TURN: usize = 320 * 1024;

/// Bytes sent: many times the 4 MiB window a bulk stream grows to.
const TOTAL: usize = 24 << 20;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

#[test]
fn an_eager_reader_gets_its_bytes_a_driver_turn_at_a_time_not_a_window() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (a, c) = tokio::join!(l.accept(), TcpStream::connect(addr));
            let client = Session::client(c.unwrap(), Config::default());
            let server = Session::server(a.unwrap().0, Config::default());

            let writer = tokio::spawn(async move {
                let mut s = client.open().unwrap();
                let chunk: Vec<u8> = (0..64 * 1024).map(byte).collect();
                let mut sent = 0;
                while sent < TOTAL {
                    // The pattern repeats every 64 KiB only if the offset
                    // does: write whole chunks, so that it does.
                    s.write_all(&chunk).await.unwrap();
                    sent += chunk.len();
                }
                s.shutdown().await.unwrap();
                client
            });

            // The reader is a task, like the driver: the future `block_on`
            // runs is polled only between batches of tasks.
            let reader = tokio::spawn(async move {
                let mut s = server.accept().await.unwrap();
                // A buffer larger than any window: the reader takes whatever the
                // session holds for it at once.
                let mut buf = vec![0u8; 8 << 20];
                let (mut got, mut largest, mut reads) = (0usize, 0usize, 0usize);
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    for (k, &b) in buf[..n].iter().enumerate() {
                        let i = (got + k) % (64 * 1024);
                        assert_eq!(b, byte(i), "byte {} differs", got + k);
                    }
                    got += n;
                    largest = largest.max(n);
                    reads += 1;
                }
                (server, got, largest, reads)
            });
            let (server, got, largest, reads) = reader.await.unwrap();
            assert_eq!(got, TOTAL, "bytes lost or added");
            assert!(
                largest <= TURN,
                "one read took {largest} bytes: the driver read ahead of the waiting \
                 reader by more than one turn ({TURN} bytes) in {reads} reads"
            );
            let client = writer.await.unwrap();
            client.close().unwrap();
            server.wait().await;
        })
        .await
        .expect("test timed out (a hang)");
    });
}
