//! Batched UDP I/O: `recvmmsg(2)` / `sendmmsg(2)`, so a busy worker pays one system call per
//! batch instead of two per query. The only unsafe code of the crate lives here.
#![allow(unsafe_code, reason = "recvmmsg/sendmmsg have no safe std wrapper")]

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    ptr,
};

/// Largest datagram read.
pub const BUF_SIZE: usize = 4096;

/// Receive buffers and headers for up to `n` datagrams.
pub struct Batch {
    bufs: Vec<[u8; BUF_SIZE]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    received: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("capacity", &self.bufs.len())
            .finish_non_exhaustive()
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in; storage is large enough
            // and suitably aligned for every sockaddr type.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *ptr::from_mut(&mut s).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (s, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *ptr::from_mut(&mut s).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

impl Batch {
    /// Buffers for `n` datagrams.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        Self {
            bufs: vec![[0u8; BUF_SIZE]; n],
            // SAFETY: all-zero sockaddr_storage/iovec/mmsghdr are valid values; the pointers in
            // them are set before every use.
            addrs: vec![unsafe { zeroed() }; n],
            iovs: vec![unsafe { zeroed() }; n],
            hdrs: vec![unsafe { zeroed() }; n],
            received: 0,
        }
    }

    /// Block until at least one datagram arrives (or the socket's read timeout passes), then take
    /// every datagram already queued, up to the batch size.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_SIZE,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self for the duration of the
        // call; n is the length of the header array.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            self.received = 0;
            return Err(io::Error::last_os_error());
        }
        self.received = usize::try_from(r).unwrap_or(0);
        Ok(self.received)
    }

    /// Datagram `i` of the last receive and its source.
    pub fn packet(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.received {
            return None;
        }
        let len = (self.hdrs[i].msg_len as usize).min(BUF_SIZE);
        let src = to_socket_addr(&self.addrs[i])?;
        Some((&self.bufs[i][..len], src))
    }
}

/// Send every `(bytes, destination)` with as few `sendmmsg` calls as possible; returns how many
/// datagrams the kernel accepted.
pub fn send(socket: &UdpSocket, replies: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    if replies.is_empty() {
        return Ok(0);
    }
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        replies.iter().map(|(_, a)| to_storage(*a)).collect();
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero mmsghdr is valid; pointers are filled in below.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; replies.len()];
    for (i, h) in hdrs.iter_mut().enumerate() {
        h.msg_hdr.msg_name = ptr::from_mut(&mut addrs[i].0).cast();
        h.msg_hdr.msg_namelen = addrs[i].1;
        h.msg_hdr.msg_iov = &raw mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    while sent < hdrs.len() {
        // SAFETY: headers point at addrs/iovs/replies, all alive until this function returns;
        // the kernel only reads the iovec buffers.
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs[sent..].as_mut_ptr(),
                (hdrs.len() - sent) as libc::c_uint,
                0,
            )
        };
        if r <= 0 {
            let e = io::Error::last_os_error();
            if sent == 0 {
                return Err(e);
            }
            break;
        }
        sent += usize::try_from(r).unwrap_or(0);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut b = Batch::new(8);
        let n = b.recv(&server).unwrap();
        assert_eq!(n, 5);
        let (p, src) = b.packet(4).unwrap();
        assert_eq!((p, src), (&[4u8; 3][..], client.local_addr().unwrap()));
        let replies: Vec<(&[u8], SocketAddr)> = (0..n).map(|i| b.packet(i).unwrap()).collect();
        assert_eq!(send(&server, &replies).unwrap(), 5);
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..5u8 {
            let (len, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i; 3]);
        }
    }
}
