//! The tokio driver (`muxado::tokio`) against ngrok's crate and against our
//! io_uring engine driver, over loopback TCP, in both roles and with either
//! side opening the streams. Every byte is checked against a seeded pattern;
//! every test is bounded by `common::TEST_TIMEOUT`.

mod common;
mod tokio_common;

use tokio_common::bodies::*;
use tokio_common::{run, Kind, Transport::Tcp};

use Kind::{Engine, Ngrok, Tokio};

/// Runs `body` with the tokio driver against `peer` in all four
/// combinations of (tokio is server / client) × (tokio opens / peer opens).
fn all_ways<B: tokio_common::Body>(peer: Kind, body: B) {
    run(Tokio, peer, Tcp, true, body.clone());
    run(Tokio, peer, Tcp, false, body.clone());
    run(peer, Tokio, Tcp, true, body.clone());
    run(peer, Tokio, Tcp, false, body);
}

#[test]
fn echo_vs_ngrok() {
    all_ways(Ngrok, Echo::new(8 * MIB));
}

#[test]
fn echo_vs_engine() {
    all_ways(Engine, Echo::new(8 * MIB));
}

#[test]
fn echo_vs_tokio() {
    run(Tokio, Tokio, Tcp, true, Echo::new(8 * MIB));
}

#[test]
fn thousand_streams_vs_ngrok() {
    all_ways(Ngrok, Many::new(1000));
}

#[test]
fn thousand_streams_vs_engine() {
    all_ways(Engine, Many::new(1000));
}

#[test]
fn half_close_vs_ngrok() {
    all_ways(Ngrok, HalfClose);
}

#[test]
fn half_close_vs_engine() {
    all_ways(Engine, HalfClose);
}

// ngrok's streams cannot reset, so against ngrok the tokio side resets,
// whether it opened the stream or accepted it; ngrok sees the code.
#[test]
fn reset_by_tokio_vs_ngrok() {
    run(Tokio, Ngrok, Tcp, true, Reset { by_opener: true });
    run(Tokio, Ngrok, Tcp, false, Reset { by_opener: false });
    run(Ngrok, Tokio, Tcp, true, Reset { by_opener: false });
    run(Ngrok, Tokio, Tcp, false, Reset { by_opener: true });
}

#[test]
fn reset_vs_engine() {
    for by_opener in [true, false] {
        all_ways(Engine, Reset { by_opener });
    }
}

#[test]
fn slow_reader_vs_ngrok() {
    all_ways(Ngrok, SlowReader);
}

#[test]
fn slow_reader_vs_engine() {
    all_ways(Engine, SlowReader);
}

#[test]
fn session_death_vs_ngrok() {
    all_ways(Ngrok, Death);
}

#[test]
fn session_death_vs_engine() {
    all_ways(Engine, Death);
}
