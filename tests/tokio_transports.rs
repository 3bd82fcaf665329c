//! The tokio driver over Unix sockets (in a temp dir) and over TLS (rustls,
//! with a self-signed certificate made at run time by rcgen), against ngrok's
//! crate and against itself, in both roles. Every byte is checked.
//!
//! The io_uring engine driver has no Unix or TLS transport yet, so it is
//! tested against the tokio driver over TCP only (tests/tokio_interop.rs).

mod common;
mod tokio_common;

use tokio_common::bodies::*;
use tokio_common::{run, Body, Kind, Transport};

use Kind::{Ngrok, Tokio};
use Transport::{Tls, Unix};

/// Both roles, either side opening, against `peer` over `t`.
fn all_ways<B: Body>(peer: Kind, t: Transport, body: B) {
    run(Tokio, peer, t, true, body.clone());
    run(Tokio, peer, t, false, body.clone());
    run(peer, Tokio, t, true, body.clone());
    run(peer, Tokio, t, false, body);
}

#[test]
fn unix_echo_vs_ngrok() {
    all_ways(Ngrok, Unix, Echo::new(4 * MIB));
}

#[test]
fn unix_many_and_half_close_vs_ngrok() {
    all_ways(Ngrok, Unix, Many::new(1000));
    all_ways(Ngrok, Unix, HalfClose);
}

#[test]
fn unix_vs_tokio() {
    run(Tokio, Tokio, Unix, true, Echo::new(4 * MIB));
    run(Tokio, Tokio, Unix, false, Many::new(1000));
    run(Tokio, Tokio, Unix, true, Reset { by_opener: false });
    run(Tokio, Tokio, Unix, true, Death);
}

#[test]
fn tls_echo_vs_ngrok() {
    all_ways(Ngrok, Tls, Echo::new(4 * MIB));
}

#[test]
fn tls_many_and_half_close_vs_ngrok() {
    all_ways(Ngrok, Tls, Many::new(1000));
    all_ways(Ngrok, Tls, HalfClose);
}

#[test]
fn tls_slow_reader_and_death_vs_ngrok() {
    all_ways(Ngrok, Tls, SlowReader);
    all_ways(Ngrok, Tls, Death);
}

#[test]
fn tls_vs_tokio() {
    run(Tokio, Tokio, Tls, true, Echo::new(4 * MIB));
    run(Tokio, Tokio, Tls, false, Many::new(1000));
    run(Tokio, Tokio, Tls, true, Reset { by_opener: true });
    run(Tokio, Tokio, Tls, false, Death);
}
