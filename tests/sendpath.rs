//! The send path keeps byte order under every send mode: plain SEND and SEND_ZC (whose buffer
//! is released only at the notification CQE). Several streams write pseudo-random bytes in odd-sized
//! pieces; the server regenerates each stream's bytes, compares them byte by byte and sends
//! back an order-sensitive checksum (FNV-1a 64) that the client checks too.

use muxado::engine::{self, net::TcpListener, net::TcpStream, Builder};
use muxado::{Config, Session};

const STREAMS: u64 = 4;
const PER_STREAM: usize = 6 << 20;

/// xorshift64*: the bytes of stream `seed`.
fn fill(seed: u64, offset: usize, out: &mut [u8]) {
    // Regenerate from the start of the 8-byte word that contains `offset`.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut word = [0u8; 8];
    let mut pos = 0usize;
    let mut i = 0;
    while i < out.len() {
        if pos % 8 == 0 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        }
        if pos >= offset {
            out[i] = word[pos % 8];
            i += 1;
        }
        pos += 1;
    }
}

fn stream_bytes(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; PER_STREAM];
    fill(seed, 0, &mut v);
    v
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn transfer(builder: Builder) {
    let result = builder.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let session = Session::server(tcp, Config::default());
            let mut tasks = Vec::new();
            for _ in 0..STREAMS {
                let mut stream = session.accept().await.unwrap();
                tasks.push(engine::spawn(async move {
                    let mut got = Vec::with_capacity(PER_STREAM + 8);
                    stream.read_to_end(&mut got).await.unwrap();
                    let seed = u64::from_be_bytes(got[..8].try_into().unwrap());
                    let body = &got[8..];
                    let expected = stream_bytes(seed);
                    assert_eq!(body.len(), expected.len(), "stream {seed}: length");
                    if let Some(i) = body.iter().zip(&expected).position(|(a, b)| a != b) {
                        panic!("stream {seed}: first wrong byte at offset {i}");
                    }
                    stream.write_all(&fnv(body).to_be_bytes()).await.unwrap();
                    stream.close_write().unwrap();
                }));
            }
            for t in tasks {
                t.await;
            }
            session.wait().await;
        });
        let session = Session::client(TcpStream::connect(addr).await.unwrap(), Config::default());
        let mut tasks = Vec::new();
        for seed in 1..=STREAMS {
            let mut stream = session.open().unwrap();
            tasks.push(engine::spawn(async move {
                let data = stream_bytes(seed);
                stream.write_all(&seed.to_be_bytes()).await.unwrap();
                // Odd-sized pieces, from 1 byte to ~300 KiB, so that frames and sends of every
                // size interleave between the streams.
                let mut off = 0;
                let mut step = 1usize;
                while off < data.len() {
                    let n = step.min(data.len() - off);
                    stream.write_all(&data[off..off + n]).await.unwrap();
                    off += n;
                    step = (step * 7 + 13) % (300 * 1024) + 1;
                }
                stream.close_write().unwrap();
                let mut sum = [0u8; 8];
                stream.read_exact(&mut sum).await.unwrap();
                assert_eq!(
                    u64::from_be_bytes(sum),
                    fnv(&data),
                    "stream {seed}: checksum"
                );
            }));
        }
        for t in tasks {
            t.await;
        }
        session.close().unwrap();
        server.await;
    });
    match result {
        Ok(()) => {}
        Err(e) => eprintln!("skipped: {e}"),
    }
}

#[test]
fn plain_send_keeps_order() {
    transfer(Builder::default());
}

#[test]
fn zero_copy_send_keeps_order() {
    transfer(Builder::default().send_zero_copy(Some(16 * 1024)));
}

#[test]
fn every_send_zero_copy_keeps_order() {
    transfer(Builder::default().send_zero_copy(Some(1)));
}

/// `TcpStream::send_zc` returns the buffer only after the notification; the bytes arrive intact.
#[test]
fn tcp_send_zc_round_trip() {
    let r = engine::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = engine::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut rx = conn.recv_multishot();
            let mut got = Vec::new();
            while let Some(chunk) = rx.next().await.unwrap() {
                got.extend_from_slice(&chunk);
            }
            got
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let data = stream_bytes(99);
        let mut sent = 0;
        while sent < data.len() {
            let (r, _) = client.send_zc(data[sent..].to_vec()).await;
            match r {
                Ok(n) => sent += n,
                Err(e) if e.raw_os_error() == Some(EINVAL) => return None,
                Err(e) => panic!("send_zc: {e}"),
            }
        }
        client.shutdown_write().unwrap();
        let got = server.await;
        assert_eq!(got.len(), data.len());
        assert!(got == data, "zero-copy bytes differ");
        Some(())
    });
    if let Ok(None) | Err(_) = r {
        eprintln!("skipped: SEND_ZC unavailable");
    }
}

const EINVAL: i32 = 22;
