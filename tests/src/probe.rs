//! Traffic probes: echo servers and clients whose sockets are created inside lab namespaces.
//!
//! A socket belongs to the network namespace of the thread that created it, so each socket is
//! created on a thread that joined the namespace and then used from anywhere.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::in_netns;

/// Echo servers (TCP and UDP) on some ports of one namespace, stopped on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts TCP and UDP echo servers on `ports` at `addr` (an address of `netns`).
    pub fn start(netns: &str, addr: &str, ports: &[u16]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let sa: SocketAddr = format!("{}:{port}", bracket(addr)).parse()?;
            let tcp = in_netns(netns, move || TcpListener::bind(sa))??;
            tcp.set_nonblocking(true)?;
            let udp = in_netns(netns, move || UdpSocket::bind(sa))??;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let s = stop.clone();
            threads.push(std::thread::spawn(move || tcp_loop(&tcp, &s)));
            let s = stop.clone();
            threads.push(std::thread::spawn(move || udp_loop(&udp, &s)));
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

fn tcp_loop(l: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let stop_conn = Arc::new(AtomicBool::new(false));
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = stop_conn;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let mut idle = 0;
                    // Echo until the peer closes or stays silent for 30 s.
                    while idle < 150 {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                idle = 0;
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                idle += 1;
                            }
                            Err(_) => break,
                        }
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn udp_loop(u: &UdpSocket, stop: &AtomicBool) {
    // Room for the largest datagram (fragmented ones included).
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    }
}

/// Opens a TCP connection from `netns` to `addr:port` and checks one echo round trip.
/// `Ok(true)` when it worked, `Ok(false)` when it timed out or was refused/reset.
pub fn tcp_echo(netns: &str, addr: &str, port: u16, timeout: Duration) -> anyhow::Result<bool> {
    Ok(TcpSession::open(netns, addr, port, timeout)?.is_some_and(|mut s| s.ping()))
}

/// Sends one UDP datagram from `netns` and waits for its echo.
pub fn udp_echo(netns: &str, addr: &str, port: u16, timeout: Duration) -> anyhow::Result<bool> {
    let bind: SocketAddr = if addr.contains(':') {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = in_netns(netns, move || UdpSocket::bind(bind))??;
    sock.set_read_timeout(Some(timeout))?;
    let to: SocketAddr = format!("{}:{port}", bracket(addr)).parse()?;
    sock.send_to(b"catalyst-udp-probe", to)?;
    let mut buf = [0u8; 64];
    Ok(matches!(sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"catalyst-udp-probe"))
}

/// Sends one UDP datagram of `size` bytes (larger than the path MTU: it leaves fragmented) from
/// `netns` and waits for its echo, byte for byte.
pub fn udp_echo_sized(
    netns: &str,
    addr: &str,
    port: u16,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let bind: SocketAddr = if addr.contains(':') {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = in_netns(netns, move || UdpSocket::bind(bind))??;
    sock.set_read_timeout(Some(timeout))?;
    let to: SocketAddr = format!("{}:{port}", bracket(addr)).parse()?;
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    sock.send_to(&msg, to)?;
    let mut buf = vec![0u8; size + 1];
    Ok(matches!(sock.recv_from(&mut buf), Ok((n, _)) if buf[..n] == msg[..]))
}

/// Opens a TCP connection from `netns` to `addr:port`, writes `size` bytes in full-sized
/// segments and reads the echo back, all within `timeout`. `Ok(false)` when the connection or
/// the transfer failed or stalled (a path-MTU black hole stalls it).
pub fn tcp_echo_bulk(
    netns: &str,
    addr: &str,
    port: u16,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let Some(session) = TcpSession::open(netns, addr, port, timeout)? else {
        return Ok(false);
    };
    let mut stream = session.stream;
    let _ = stream.set_nodelay(false);
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut reader = stream.try_clone()?;
    let want = msg.len();
    // Read on a thread while writing, so neither side's buffers fill up.
    let read = std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        reader.read_exact(&mut got).map(|()| got)
    });
    let wrote = stream.write_all(&msg).is_ok();
    let echoed = read.join().ok().and_then(Result::ok);
    Ok(wrote && echoed.is_some_and(|g| g == msg))
}

/// A long-lived TCP connection created inside a namespace.
pub struct TcpSession {
    stream: TcpStream,
    timeout: Duration,
}

impl TcpSession {
    /// Connects; `None` when the connection could not be established within `timeout`.
    pub fn open(
        netns: &str,
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<Option<Self>> {
        let to: SocketAddr = format!("{}:{port}", bracket(addr)).parse()?;
        let stream = in_netns(netns, move || TcpStream::connect_timeout(&to, timeout))?;
        match stream {
            Ok(stream) => {
                // A connection reset right after the handshake makes these fail; the ping that
                // follows then reports the failure.
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                let _ = stream.set_nodelay(true);
                Ok(Some(Self { stream, timeout }))
            }
            Err(_) => Ok(None),
        }
    }

    /// One echo round trip; false when it failed or timed out.
    pub fn ping(&mut self) -> bool {
        let msg = b"catalyst-tcp-probe";
        if self.stream.write_all(msg).is_err() {
            return false;
        }
        let mut buf = [0u8; 18];
        let _ = self.stream.set_read_timeout(Some(self.timeout));
        self.stream.read_exact(&mut buf).is_ok() && &buf == msg
    }
}

/// Pings a [`TcpSession`] continuously on a thread until [`Pinger::stop`], counting round trips
/// that worked and that failed (to show that a change caused no gap).
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u32, u32)>,
}

impl Pinger {
    /// Starts pinging, pausing `pause` between round trips.
    pub fn start(mut session: TcpSession, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !st.load(Ordering::Relaxed) {
                if session.ping() {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(pause);
            }
            (ok, failed)
        });
        Self { stop, thread }
    }

    /// Stops and returns (round trips that worked, round trips that failed).
    pub fn stop(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("pinger thread")
    }
}
