//! Listeners of the Observer API: TCP and a UNIX socket, both serving the same services.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::{
    StreamExt as _,
    wrappers::{TcpListenerStream, UnixListenerStream},
};
use tonic::{
    codec::CompressionEncoding,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::ServingStatus;

use super::{HEALTH_SERVICE, ObserverService, PeerService};
use crate::{
    api::{observer::observer_server::ObserverServer, peer::peer_server::PeerServer},
    config::ObserverTlsConfig,
};

/// Errors setting up the Observer listeners.
#[derive(Debug, thiserror::Error)]
pub enum ObserverServerError {
    /// The TCP address could not be bound.
    #[error("cannot listen on `{addr}`")]
    BindTcp {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The UNIX socket could not be created.
    #[error("cannot listen on UNIX socket `{}`", path.display())]
    BindUnix {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("observer server failed")]
    Serve(#[source] tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("cannot read observer TLS {what} `{}`", path.display())]
    TlsFile {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration was rejected (bad PEM, key not matching the certificate).
    #[error("invalid observer TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    /// The reflection service could not read the embedded descriptors (a build defect).
    #[error("cannot build the gRPC reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// gRPC server reflection (v1 and v1alpha, for grpcurl and grpcui) over the Observer and health
/// descriptors.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ObserverServerError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        builder()
            .build_v1()
            .map_err(ObserverServerError::Reflection)?,
        builder()
            .build_v1alpha()
            .map_err(ObserverServerError::Reflection)?,
    ))
}

/// Reads the TLS files of `cfg` into a server TLS configuration.
pub fn tls_config(cfg: &ObserverTlsConfig) -> Result<ServerTlsConfig, ObserverServerError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| ObserverServerError::TlsFile {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let identity = Identity::from_pem(read("certificate", &cfg.cert)?, read("key", &cfg.key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &cfg.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
    }
    Ok(tls)
}

/// gRPC transport limits of the Observer listeners (`observer.*` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest message decoded or encoded, bytes.
    pub max_message_bytes: usize,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Keepalive ping interval (`None`: no pings).
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::ObserverConfig::default())
    }
}

impl TransportLimits {
    /// The limits configured in `cfg`.
    pub fn from_config(cfg: &crate::config::ObserverConfig) -> Self {
        Self {
            max_message_bytes: cfg.max_message_bytes,
            max_concurrent_streams: cfg.max_concurrent_streams,
            keepalive_interval: (cfg.keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.keepalive_interval_ms)),
            keepalive_timeout: Duration::from_millis(cfg.keepalive_timeout_ms),
        }
    }

    /// A server builder with these limits.
    pub fn builder(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(self.keepalive_interval)
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
    }
}

/// Bound listeners (bound first, so configuration errors surface before the agent reports ready).
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP listener.
    pub tcp: Option<TcpListener>,
    /// UNIX socket listener and its path (removed when the listener is dropped).
    pub unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds `tcp` and `unix` (a stale socket file is replaced; its directory is created).
    pub async fn bind(
        tcp: Option<SocketAddr>,
        unix: Option<&Path>,
    ) -> Result<Self, ObserverServerError> {
        let mut me = Self::default();
        if let Some(addr) = tcp {
            me.tcp = Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ObserverServerError::BindTcp { addr, source })?,
            );
        }
        if let Some(path) = unix {
            let err = |source| ObserverServerError::BindUnix {
                path: path.to_owned(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
            let l = UnixListener::bind(path).map_err(err)?;
            me.unix = Some((l, path.to_owned()));
        }
        Ok(me)
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Serves the Observer, peer and health services on every listener until one of them fails;
/// with `tls`, the TCP listener speaks TLS only (the UNIX socket stays plaintext) and this node
/// is announced with its TLS server name. Responses are gzip-compressed for clients that
/// accept it, and gzip-compressed requests are accepted.
pub async fn serve(
    service: ObserverService,
    listeners: Listeners,
    tls: Option<ServerTlsConfig>,
) -> Result<(), ObserverServerError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let (reflect_v1, reflect_v1alpha) = reflection()?;
    let limits = service.limits;
    if tls.is_some() {
        service.peers.upsert(service.self_peer(true));
    }
    let peer = PeerService::new(service.peers.clone());
    let observer = ObserverServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let peer = PeerServer::new(peer)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let router = |builder: Server| {
        let mut builder = builder;
        builder
            .add_service(health.clone())
            .add_service(observer.clone())
            .add_service(peer.clone())
            .add_service(reflect_v1.clone())
            .add_service(reflect_v1alpha.clone())
    };
    let tcp_builder = match tls {
        Some(tls) => limits
            .builder()
            .tls_config(tls)
            .map_err(ObserverServerError::Tls)?,
        None => limits.builder(),
    };
    let tcp = async {
        match listeners.tcp {
            Some(l) => router(tcp_builder)
                .serve_with_incoming(TcpListenerStream::new(l))
                .await
                .map_err(ObserverServerError::Serve),
            None => std::future::pending().await,
        }
    };
    let unix_path = listeners.unix.as_ref().map(|(_, p)| p.clone());
    let unix = async {
        match listeners.unix {
            Some((l, _)) => router(limits.builder())
                .serve_with_incoming(
                    UnixListenerStream::new(l).map(|c| c.map(super::authority::accept)),
                )
                .await
                .map_err(ObserverServerError::Serve),
            None => std::future::pending().await,
        }
    };
    let _cleanup = unix_path.map(SocketFile);
    tokio::select! {
        r = tcp => r,
        r = unix => r,
    }
}

/// Removes the socket file when serving stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
