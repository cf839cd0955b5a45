//! The intake's own connection to one Redis server: RESP written straight
//! from the envelopes, replies read by the task that wrote the requests.
//!
//! Through redis-rs, a webhook's transaction went: the envelope encoded into
//! a `Cmd`, the pipeline packed into a buffer of its own, a channel to the
//! multiplexed connection's task, that task's codec buffer, and the reply
//! back through a oneshot; three copies of each body and two task hand-offs,
//! about 4 µs of the gateway's ~25 µs per webhook (docs/performance-notes.md,
//! "Twentieth session"). Here the intake writer encodes the transaction once
//! into one buffer, writes it, and reads the replies itself.
//!
//! Only what the intake needs: RESP2 requests, the replies Redis sends to
//! them (simple strings, errors, integers, bulk strings, arrays), `AUTH` and
//! `SELECT` from the URL, TCP, TLS and Unix sockets. A Redis Cluster keeps
//! going through redis-rs, which follows `MOVED`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where one server is, and how to log in; parsed from `redis.url`.
#[derive(Clone)]
pub struct Endpoint {
    address: Address,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

#[derive(Clone)]
enum Address {
    Tcp { host: String, port: u16 },
    Tls { host: String, port: u16, insecure: bool },
    Unix(PathBuf),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        let address = match &self.address {
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Tls { host, port, .. } => format!("{host}:{port} (TLS)"),
            Address::Unix(path) => path.display().to_string(),
        };
        f.debug_struct("Endpoint").field("address", &address).field("db", &self.db).finish()
    }
}

impl Endpoint {
    /// `url` as dialled (`redis://`, `rediss://` with `#insecure` for a
    /// self-signed certificate, `unix://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let info = url.into_connection_info().map_err(|err| format!("redis.url: {err}"))?;
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp { host: host.clone(), port: *port },
            ConnectionAddr::TcpTls { host, port, insecure, .. } => {
                Address::Tls { host: host.clone(), port: *port, insecure: *insecure }
            }
            ConnectionAddr::Unix(path) => Address::Unix(path.clone()),
            other => return Err(format!("redis.url: cannot dial {other}")),
        };
        let redis = info.redis_settings();
        Ok(Endpoint {
            address,
            username: redis.username().map(str::to_string),
            password: redis.password().map(str::to_string),
            db: redis.db(),
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection.
pub struct Wire {
    io: Box<dyn Io>,
    read: BytesMut,
}

impl Wire {
    /// Dials `endpoint` and logs in; everything within `timeout`.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Wire, String> {
        match tokio::time::timeout(timeout, Self::dial(endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no connection within {timeout:?}")),
        }
    }

    async fn dial(endpoint: &Endpoint) -> Result<Wire, String> {
        let io: Box<dyn Io> = match &endpoint.address {
            Address::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|err| format!("cannot connect to {host}:{port}: {err}"))?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            Address::Tls { host, port, insecure } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|err| format!("cannot connect to {host}:{port}: {err}"))?;
                let _ = stream.set_nodelay(true);
                Box::new(tls::wrap(stream, host, *insecure).await?)
            }
            Address::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|err| format!("cannot connect to {}: {err}", path.display()))?,
            ),
        };
        let mut wire = Wire { io, read: BytesMut::with_capacity(16 * 1024) };
        let mut hello = Vec::new();
        let mut expected = 0;
        if let Some(password) = &endpoint.password {
            match &endpoint.username {
                Some(user) => put_command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => put_command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            expected += 1;
        }
        if endpoint.db != 0 {
            put_command(&mut hello, &[b"SELECT", endpoint.db.to_string().as_bytes()]);
            expected += 1;
        }
        if expected > 0 {
            wire.write(&hello).await?;
            for _ in 0..expected {
                if let Reply::Error(err) = wire.reply().await? {
                    return Err(format!("redis refused the login: {err}"));
                }
            }
        }
        Ok(wire)
    }

    /// Writes `bytes` whole.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io.write_all(bytes).await.map_err(|err| format!("cannot write to redis: {err}"))?;
        self.io.flush().await.map_err(|err| format!("cannot write to redis: {err}"))
    }

    /// Reads whatever has arrived (at least one byte); cancel-safe, so it
    /// can wait in a `select!` beside new work.
    pub async fn fill(&mut self) -> Result<(), String> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read.reserve(16 * 1024);
        }
        match self.io.read_buf(&mut self.read).await {
            Ok(0) => Err("redis closed the connection".to_string()),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("cannot read from redis: {err}")),
        }
    }

    /// The next complete reply already read, if any.
    pub fn take(&mut self) -> Result<Option<Reply>, String> {
        match parse(&self.read, 0)? {
            Some((reply, used)) => {
                self.read.advance(used);
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }

    /// Waits for the next reply.
    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some(reply) = self.take()? {
                return Ok(reply);
            }
            self.fill().await?;
        }
    }
}

/// A reply, RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Nested arrays deeper than this are refused (the intake's replies are
/// two deep).
const DEPTH: usize = 8;

/// One reply from the start of `buf`, with the bytes it took; `None` while
/// it is incomplete.
fn parse(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > DEPTH {
        return Err("redis sent arrays nested too deep".to_string());
    }
    let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else { return Ok(None) };
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err("redis sent an empty line".to_string());
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| format!("redis sent {:?} where a number belongs", text()))
    };
    let head = end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), head))),
        b'-' => Ok(Some((Reply::Error(text()), head))),
        b':' => Ok(Some((Reply::Integer(number()?), head))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), head)));
            }
            let len = usize::try_from(len).map_err(|_| "redis sent a bulk string too long".to_string())?;
            let Some(end) = head.checked_add(len).and_then(|n| n.checked_add(2)) else {
                return Err("redis sent a bulk string too long".to_string());
            };
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[head + len..head + len + 2] != b"\r\n" {
                return Err("redis sent a bulk string without its end".to_string());
            }
            Ok(Some((Reply::Bulk(Some(buf[head..head + len].to_vec())), end)))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), head)));
            }
            let mut used = head;
            let mut items = Vec::with_capacity(usize::try_from(len.min(1024)).unwrap_or(0));
            for _ in 0..len {
                match parse(&buf[used..], depth + 1)? {
                    Some((item, n)) => {
                        items.push(item);
                        used += n;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), used)))
        }
        other => Err(format!("redis sent a reply of unknown type {:?}", char::from(other))),
    }
}

/// `*<n>\r\n`.
pub fn put_array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `$<len>\r\n<bytes>\r\n`.
pub fn put_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A bulk string written by `fill` straight into `out`: its length is known
/// only afterwards, so the header is put in front of it then (one move of
/// the bytes within the buffer, instead of a buffer of its own).
pub fn put_bulk_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    fill(out);
    let len = out.len() - start;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(len).as_bytes();
    let mut head = [0u8; 24];
    head[0] = b'$';
    head[1..1 + digits.len()].copy_from_slice(digits);
    head[1 + digits.len()..3 + digits.len()].copy_from_slice(b"\r\n");
    let head = &head[..3 + digits.len()];
    out.extend_from_slice(head);
    out[start..].rotate_right(head.len());
    out.extend_from_slice(b"\r\n");
}

/// A whole command.
pub fn put_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    put_array(out, args.len());
    for arg in args {
        put_bulk(out, arg);
    }
}

mod tls {
    use super::*;

    /// TLS over `stream`, verifying `host`'s certificate against the
    /// platform's and webpki's roots, or (with `#insecure`) not at all.
    pub async fn wrap(
        stream: tokio::net::TcpStream,
        host: &str,
        insecure: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let config = if insecure { insecure_config()? } else { verified_config()? };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|err| format!("redis.url: {host} is not a TLS server name: {err}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|err| format!("TLS with {host} failed: {err}"))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
    }

    fn verified_config() -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        Ok(builder(provider())?.with_root_certificates(roots).with_no_client_auth())
    }

    fn insecure_config() -> Result<rustls::ClientConfig, String> {
        let provider = provider();
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        Ok(builder(provider)?.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
    }

    fn builder(
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS: {err}"))
    }

    /// `redis.tls_insecure`: any certificate (Heroku Redis's are
    /// self-signed); the signatures of the handshake are still checked.
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &rustls::pki_types::CertificateDer<'_>,
            _intermediates: &[rustls::pki_types::CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_whole_or_not_at_all() {
        let exec = b"*2\r\n:7\r\n*2\r\n:2\r\n$3\r\nm-1\r\n";
        let (reply, used) = parse(exec, 0).unwrap().unwrap();
        assert_eq!(used, exec.len());
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Integer(7),
                Reply::Array(Some(vec![Reply::Integer(2), Reply::Bulk(Some(b"m-1".to_vec()))]))
            ]))
        );
        for cut in 0..exec.len() {
            assert_eq!(parse(&exec[..cut], 0).unwrap(), None, "{cut} bytes");
        }
        assert_eq!(parse(b"+QUEUED\r\n+OK", 0).unwrap(), Some((Reply::Status("QUEUED".into()), 9)));
        assert_eq!(parse(b"-ERR wrong\r\n", 0).unwrap(), Some((Reply::Error("ERR wrong".into()), 12)));
        assert_eq!(parse(b"$-1\r\n*-1\r\n", 0).unwrap(), Some((Reply::Bulk(None), 5)));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse(b"?what\r\n", 0).is_err());
        assert!(parse(b":x\r\n", 0).is_err());
        assert!(parse(b"$3\r\nabcd\r\n", 0).is_err());
        assert!(parse(b"\r\n", 0).is_err());
        let deep = "*1\r\n".repeat(DEPTH + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes(), 0).is_err());
    }

    #[test]
    fn a_bulk_string_gets_its_length_in_front() {
        let mut out = b"*1\r\n".to_vec();
        put_bulk_with(&mut out, |out| out.extend_from_slice(&[7u8; 300]));
        let mut expected = b"*1\r\n$300\r\n".to_vec();
        expected.extend_from_slice(&[7u8; 300]);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(out, expected);
    }
}
