//! Listeners of the Observer API: TCP and a UNIX socket, both serving the same services.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::{HEALTH_SERVICE, ObserverService};
use crate::api::observer::observer_server::ObserverServer;

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

/// Serves the Observer and health services on every listener until one of them fails.
pub async fn serve(
    service: ObserverService,
    listeners: Listeners,
) -> Result<(), ObserverServerError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let router = || {
        Server::builder()
            .add_service(health.clone())
            .add_service(ObserverServer::new(service.clone()))
    };
    let tcp = async {
        match listeners.tcp {
            Some(l) => router()
                .serve_with_incoming(TcpListenerStream::new(l))
                .await
                .map_err(ObserverServerError::Serve),
            None => std::future::pending().await,
        }
    };
    let unix_path = listeners.unix.as_ref().map(|(_, p)| p.clone());
    let unix = async {
        match listeners.unix {
            Some((l, _)) => router()
                .serve_with_incoming(UnixListenerStream::new(l))
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
