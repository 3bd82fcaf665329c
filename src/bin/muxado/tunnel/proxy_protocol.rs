//! The PROXY protocol v2 header (haproxy's spec, binary form): sent first to
//! the origin with `--proxy-protocol`, so it sees the public client's address
//! instead of the agent's.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `src` to `dst`. Without both addresses
/// it is a LOCAL header (the origin uses the real connection's addresses).
/// IPv4 addresses are mapped to IPv6 when the other one is IPv6.
pub fn header(src: Option<SocketAddr>, dst: Option<SocketAddr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    let (Some(src), Some(dst)) = (src, dst) else {
        out.extend_from_slice(&[0x20, 0x00, 0, 0]); // v2, LOCAL; UNSPEC; no addresses
        return out;
    };
    out.push(0x21); // v2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&to_v6(s));
            out.extend_from_slice(&to_v6(d));
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_spec() {
        let h = header(
            Some("192.168.0.1:56324".parse().unwrap()),
            Some("10.0.0.1:443".parse().unwrap()),
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[192, 168, 0, 1, 10, 0, 0, 1]);
        want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]);
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_and_local_headers() {
        let h = header(
            Some("[2001:db8::1]:1000".parse().unwrap()),
            Some("127.0.0.1:80".parse().unwrap()),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &h[16 + 16..16 + 32],
            &std::net::Ipv4Addr::new(127, 0, 0, 1)
                .to_ipv6_mapped()
                .octets()
        );
        let local = header(None, None);
        assert_eq!(&local[12..], &[0x20, 0x00, 0x00, 0x00]);
    }
}
