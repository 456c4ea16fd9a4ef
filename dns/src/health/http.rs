//! `ifurlup` / `ifurlextup`: an HTTP(S) GET. Up means the status equals `httpcode` (default 200)
//! and, when `stringmatch` is set, the body contains it. Redirects are followed. The request is
//! HTTP/1.0 so the body is never chunked and the server closes the connection at its end.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpSocket,
};

use super::HealthConfig;

/// A URL failed to parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid URL `{url}`: {reason}")]
pub struct HttpError {
    url: String,
    reason: &'static str,
}

/// The parts of an http(s) URL a check needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https` when true.
    pub tls: bool,
    /// Host as written (no brackets for IPv6).
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parse `http://host[:port]/path` or `https://...`.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |reason| HttpError {
            url: url.to_string(),
            reason,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("scheme must be http or https"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed `[`"))?;
            let port = match v6[end + 1..].strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None => default_port,
            };
            (v6[..end].to_string(), port)
        } else if let Some((h, p)) = authority.rsplit_once(':') {
            (h.to_string(), p.parse().map_err(|_| bad("bad port"))?)
        } else {
            (authority.to_string(), default_port)
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug)]
struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(verify: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let cfg = if verify {
        // No system trust store is bundled; verification needs roots the operator trusts. An
        // empty store makes every certificate fail, which is the safe reading of the option.
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
            .with_no_client_auth()
    };
    Arc::new(cfg)
}

async fn connect(
    url: &Url,
    pin: Option<IpAddr>,
    source: Option<IpAddr>,
    verify: bool,
) -> Result<Box<dyn Io>, String> {
    let addr = match pin {
        Some(ip) => SocketAddr::new(ip, url.port),
        None => tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("resolve {}: {e}", url.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", url.host))?,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if !url.tls {
        return Ok(Box::new(stream));
    }
    let name = ServerName::try_from(url.host.clone()).map_err(|e| format!("server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config(verify))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    Ok(Box::new(tls))
}

async fn fetch(
    url: &Url,
    pin: Option<IpAddr>,
    opts: &BTreeMap<String, String>,
    cfg: &HealthConfig,
    limit: usize,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let source = opts
        .get("source")
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| format!("bad source `{s}`: {e}"))
        })
        .transpose()?;
    let verify = opts
        .get("verifyTLS")
        .map_or(cfg.verify_tls, |v| v == "true");
    let mut io = connect(url, pin, source, verify).await?;
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let ua = opts
        .get("useragent")
        .cloned()
        .unwrap_or_else(|| cfg.user_agent.clone());
    let mut req = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {ua}\r\nAccept: */*\r\n",
        url.path
    );
    if let Some(headers) = opts.get("headers") {
        for line in headers.lines().filter(|l| !l.is_empty()) {
            req.push_str(line);
            req.push_str("\r\n");
        }
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut header_end = None;
    loop {
        let n = match io.read(&mut chunk).await {
            Ok(n) => n,
            // Servers that close without a TLS close_notify still sent a complete answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("read: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if header_end.is_none() {
            header_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(h) = header_end
            && limit > 0
            && buf.len() - h >= limit
        {
            break;
        }
        if buf.len() > 16 * 1024 * 1024 {
            break;
        }
    }
    let h = header_end.ok_or("incomplete HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..h]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed status line")?;
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    let mut body = buf[h..].to_vec();
    if limit > 0 {
        body.truncate(limit);
    }
    Ok((status, location, body))
}

pub(super) async fn check(
    url: &str,
    pin: Option<IpAddr>,
    opts: &BTreeMap<String, String>,
    timeout: Duration,
    cfg: &HealthConfig,
) -> Result<(), String> {
    // As PowerDNS's `checked_stoi`: leading digits count (`404x` is 404), an empty value is 0,
    // and a value without digits fails the check (the target is down).
    let number = |key: &str, default: i64| -> Result<i64, String> {
        match opts.get(key) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(0),
            Some(v) => super::stoi_prefix(v).ok_or_else(|| format!("{key} `{v}` is not a number")),
        }
    };
    let expected = number("httpcode", 200)?;
    // A negative limit wraps to a huge `size_t` in PowerDNS: no limit.
    let limit = usize::try_from(number("byteslimit", 0)?).unwrap_or(0);
    let run = async {
        let mut current = Url::parse(url).map_err(|e| e.to_string())?;
        let mut current_pin = pin;
        for _ in 0..=cfg.max_redirects {
            let (status, location, body) = fetch(&current, current_pin, opts, cfg, limit).await?;
            if (300..400).contains(&status)
                && i64::from(status) != expected
                && let Some(loc) = location
            {
                let next = if loc.starts_with("http://") || loc.starts_with("https://") {
                    Url::parse(&loc).map_err(|e| e.to_string())?
                } else {
                    Url {
                        path: loc,
                        ..current.clone()
                    }
                };
                if next.host != current.host {
                    current_pin = None;
                }
                current = next;
                continue;
            }
            if i64::from(status) != expected {
                return Err(format!("HTTP status {status}, expected {expected}"));
            }
            if let Some(m) = opts.get("stringmatch")
                && !body.windows(m.len().max(1)).any(|w| w == m.as_bytes())
            {
                return Err(format!("unable to match content with `{m}`"));
            }
            return Ok(());
        }
        Err("too many redirects".to_string())
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("https://example.com:8443/health?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "example.com", 8443, "/health?x=1")
        );
        let u = Url::parse("http://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert!(Url::parse("ftp://x/").is_err());
    }
}
