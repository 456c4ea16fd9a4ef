//! `ifportup`: a TCP connect within the timeout means up.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::net::TcpSocket;

pub(super) async fn check(
    addr: SocketAddr,
    opts: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(src) = opts.get("source") {
        let ip: std::net::IpAddr = src
            .parse()
            .map_err(|e| format!("bad source `{src}`: {e}"))?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
    }
}
