//! The tunnel's own bytes on top of muxado: the control handshake and the
//! header of every tunneled stream. Stream types:
//! - [`CONTROL_TYPE`] (0): the agent's first stream. The agent writes a
//!   [`Hello`] (magic, token, services); the gateway answers a [`Reply`]
//!   (status, message, the stream type agreed for each service). The stream
//!   then stays open for notices: [`NOTICE_DRAIN`] from the gateway when it
//!   drains (the agent dials a fresh session at once); [`NOTICE_DRAIN`] from
//!   the agent when it drains, answered by [`NOTICE_DRAIN_ACK`].
//! - 1..: tunneled connections; the gateway opens them and first writes a
//!   [`ConnHeader`] (the public client's and the public listener's
//!   addresses), then the connection's bytes.
//!
//! All integers are big-endian. Every length is bounded, so a hostile peer
//! cannot make either side allocate more than a few KiB per handshake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use muxado::{Error, Stream};

/// Stream type of the control stream.
pub const CONTROL_TYPE: u32 = 0;
/// First bytes of a [`Hello`]: "muxado tunnel, version 1".
pub const MAGIC: [u8; 4] = *b"MXT1";
/// Longest token accepted.
pub const MAX_TOKEN: usize = 1024;
/// Longest service name.
pub const MAX_NAME: usize = 255;
/// Most services one agent session may forward.
pub const MAX_SERVICES: usize = 256;
/// Longest reply message.
const MAX_MESSAGE: usize = 1024;
/// Written on the control stream by the side that starts draining: the
/// gateway (the agent dials a fresh session), or the agent (the gateway
/// opens no new stream on this session and answers [`NOTICE_DRAIN_ACK`]).
pub const NOTICE_DRAIN: u8 = 1;
/// The gateway's answer to an agent's [`NOTICE_DRAIN`]. It follows every
/// stream the gateway opened on the session before (one ordered byte
/// stream), so the agent's GOAWAY sent after it refuses none of them.
pub const NOTICE_DRAIN_ACK: u8 = 2;

/// The agent's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub token: Vec<u8>,
    /// This agent slot had a session before (counted as a reconnect).
    pub reconnect: bool,
    pub services: Vec<String>,
}

/// What the gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    BadToken = 1,
    BadRequest = 2,
    Draining = 3,
}

/// The gateway's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub message: String,
    /// One per service of the hello, in its order: the stream type the
    /// gateway will open for it, 0 if the gateway does not expose it.
    pub types: Vec<u32>,
    /// The gateway core this session runs on, and how many it has.
    pub core: u16,
    pub cores: u16,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.token.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(self.token.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.token);
        out.push(self.reconnect as u8);
        out.extend_from_slice(&(self.services.len() as u16).to_be_bytes());
        for name in &self.services {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// Reads a hello; a malformed one is an error message for the log.
    pub async fn read(stream: &mut impl ReadExact) -> Result<Hello, String> {
        let mut magic = [0u8; 4];
        read(stream, &mut magic).await?;
        if magic != MAGIC {
            return Err("not a muxado tunnel agent (bad magic)".into());
        }
        let len = read_u16(stream).await? as usize;
        if len > MAX_TOKEN {
            return Err(format!("token of {len} bytes (limit {MAX_TOKEN})"));
        }
        let mut token = vec![0u8; len];
        read(stream, &mut token).await?;
        let reconnect = read_u8(stream).await? != 0;
        let count = read_u16(stream).await? as usize;
        if count > MAX_SERVICES {
            return Err(format!("{count} services (limit {MAX_SERVICES})"));
        }
        let mut services = Vec::with_capacity(count);
        for _ in 0..count {
            let len = read_u8(stream).await? as usize;
            let mut name = vec![0u8; len];
            read(stream, &mut name).await?;
            services.push(String::from_utf8(name).map_err(|_| "service name not UTF-8")?);
        }
        Ok(Hello {
            token,
            reconnect,
            services,
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let msg = &self.message.as_bytes()[..self.message.len().min(MAX_MESSAGE)];
        let mut out = Vec::with_capacity(8 + msg.len() + 4 * self.types.len());
        out.push(self.status as u8);
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg);
        out.extend_from_slice(&(self.types.len() as u16).to_be_bytes());
        for t in &self.types {
            out.extend_from_slice(&t.to_be_bytes());
        }
        out.extend_from_slice(&self.core.to_be_bytes());
        out.extend_from_slice(&self.cores.to_be_bytes());
        out
    }

    pub async fn read(stream: &mut impl ReadExact) -> Result<Reply, String> {
        let status = match read_u8(stream).await? {
            0 => Status::Ok,
            1 => Status::BadToken,
            2 => Status::BadRequest,
            3 => Status::Draining,
            s => return Err(format!("unknown status {s}")),
        };
        let len = read_u16(stream).await? as usize;
        if len > MAX_MESSAGE {
            return Err(format!("message of {len} bytes"));
        }
        let mut msg = vec![0u8; len];
        read(stream, &mut msg).await?;
        let count = read_u16(stream).await? as usize;
        if count > MAX_SERVICES {
            return Err(format!("{count} services"));
        }
        let mut types = Vec::with_capacity(count);
        for _ in 0..count {
            let mut t = [0u8; 4];
            read(stream, &mut t).await?;
            types.push(u32::from_be_bytes(t));
        }
        let core = read_u16(stream).await?;
        let cores = read_u16(stream).await?;
        Ok(Reply {
            status,
            message: String::from_utf8_lossy(&msg).into_owned(),
            types,
            core,
            cores,
        })
    }
}

/// The addresses of a tunneled connection: the public client (`src`) and
/// the gateway's public listener (`dst`), for logs and the PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnHeader {
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
}

/// Longest encoded [`ConnHeader`].
pub const CONN_HEADER_MAX: usize = 1 + 2 * (16 + 2);

impl ConnHeader {
    /// Encodes into `out`; returns the length. Both addresses have the
    /// same family (IPv4 ones are mapped when the other is IPv6); family 0
    /// means unknown.
    pub fn encode(&self, out: &mut [u8; CONN_HEADER_MAX]) -> usize {
        let (Some(src), Some(dst)) = (self.src, self.dst) else {
            out[0] = 0;
            return 1;
        };
        let mut n = 1;
        let mut put = |ip: &[u8], port: u16, n: &mut usize| {
            out[*n..*n + ip.len()].copy_from_slice(ip);
            out[*n + ip.len()..*n + ip.len() + 2].copy_from_slice(&port.to_be_bytes());
            *n += ip.len() + 2;
        };
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put(&s.octets(), src.port(), &mut n);
                put(&d.octets(), dst.port(), &mut n);
                out[0] = 4;
            }
            (s, d) => {
                put(&v6(s).octets(), src.port(), &mut n);
                put(&v6(d).octets(), dst.port(), &mut n);
                out[0] = 6;
            }
        }
        n
    }

    pub async fn read(stream: &mut impl ReadExact) -> Result<ConnHeader, String> {
        let family = read_u8(stream).await?;
        let ip_len = match family {
            0 => {
                return Ok(ConnHeader {
                    src: None,
                    dst: None,
                })
            }
            4 => 4,
            6 => 16,
            f => return Err(format!("unknown address family {f}")),
        };
        let mut buf = [0u8; 2 * (16 + 2)];
        let buf = &mut buf[..2 * (ip_len + 2)];
        read(stream, buf).await?;
        let addr = |b: &[u8]| -> SocketAddr {
            let port = u16::from_be_bytes([b[ip_len], b[ip_len + 1]]);
            let ip = if ip_len == 4 {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            } else {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            SocketAddr::new(ip, port)
        };
        Ok(ConnHeader {
            src: Some(addr(&buf[..ip_len + 2])),
            dst: Some(addr(&buf[ip_len + 2..])),
        })
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Where the handshake is read from: a stream of ours, or (for the tokio
/// peer of the benchmark) any tokio reader.
#[allow(async_fn_in_trait)]
pub trait ReadExact {
    async fn read_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), String>;
}

impl ReadExact for Stream {
    async fn read_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.read_exact(buf).await.map_err(|e: Error| e.to_string())
    }
}

/// A tokio reader as a [`ReadExact`].
pub struct TokioReader<'a, R>(pub &'a mut R);

impl<R: tokio::io::AsyncRead + Unpin> ReadExact for TokioReader<'_, R> {
    async fn read_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), String> {
        tokio::io::AsyncReadExt::read_exact(self.0, buf)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

async fn read(stream: &mut impl ReadExact, buf: &mut [u8]) -> Result<(), String> {
    stream.read_exact_bytes(buf).await
}

async fn read_u8(stream: &mut impl ReadExact) -> Result<u8, String> {
    let mut b = [0u8; 1];
    read(stream, &mut b).await?;
    Ok(b[0])
}

async fn read_u16(stream: &mut impl ReadExact) -> Result<u16, String> {
    let mut b = [0u8; 2];
    read(stream, &mut b).await?;
    Ok(u16::from_be_bytes(b))
}

/// Compares tokens in time independent of where they differ.
pub fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = (expected.len() != given.len()) as u8;
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secret", b"secreT"));
        assert!(!token_matches(b"secret", b"secret2"));
        assert!(!token_matches(b"secret", b"secre"));
        assert!(!token_matches(b"secret", b""));
    }

    #[test]
    fn conn_header_families() {
        let mut buf = [0u8; CONN_HEADER_MAX];
        let v4 = ConnHeader {
            src: Some("10.0.0.1:4000".parse().unwrap()),
            dst: Some("10.0.0.2:80".parse().unwrap()),
        };
        assert_eq!(v4.encode(&mut buf), 13);
        assert_eq!(
            &buf[..13],
            &[4, 10, 0, 0, 1, 0x0f, 0xa0, 10, 0, 0, 2, 0, 80]
        );
        let mixed = ConnHeader {
            src: Some("[::1]:5".parse().unwrap()),
            dst: Some("10.0.0.2:80".parse().unwrap()),
        };
        assert_eq!(mixed.encode(&mut buf), 37);
        assert_eq!(buf[0], 6);
        let none = ConnHeader {
            src: None,
            dst: None,
        };
        assert_eq!(none.encode(&mut buf), 1);
        assert_eq!(buf[0], 0);
    }
}
