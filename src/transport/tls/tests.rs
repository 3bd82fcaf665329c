//! Tests of the TLS stream and its sans-IO state.
