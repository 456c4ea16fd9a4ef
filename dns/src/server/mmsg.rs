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

use tracing::warn;

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

/// Linux's `UDP_SEGMENT` socket option / control message (`include/uapi/linux/udp.h`).
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` is 64 on older
/// kernels and 128 on newer ones).
const MAX_SEGMENTS: usize = 64;
/// Largest payload of one segmented send (an IPv4 datagram's limit, with headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Largest reply that is sent segmented: one segment must fit the path MTU, and 1232 bytes fit
/// IPv6's minimum MTU of 1280 with the IP and UDP headers (the kernel refuses a segment larger
/// than the route's MTU, so larger replies go out one by one).
pub const MAX_GSO_SEGMENT: usize = 1232;

/// Space for one `UDP_SEGMENT` control message (a `u16`), 8-byte aligned like `cmsghdr`.
type CmsgBuf = [u64; 4];

/// Sends a batch of replies with `sendmmsg(2)`, and — when UDP segmentation offload (GSO) is on —
/// replies of one size to the same client as one segmented send (`UDP_SEGMENT`): the kernel routes
/// and builds one buffer for the run and splits it into datagrams at the end (in the NIC, or just
/// before the receiving socket on loopback), so the client still receives one datagram per reply.
/// Keeps its buffers between batches.
pub struct Sender {
    gso: bool,
    /// Segmented-send group of each reply.
    group_of: Vec<usize>,
    /// Per group: destination, segment size, replies, bytes, closed (a shorter last reply ends it).
    groups: Vec<Group>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<CmsgBuf>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per group, its first iovec; and the next free iovec while filling.
    starts: Vec<usize>,
    fill: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    dest: SocketAddr,
    segment: usize,
    count: usize,
    bytes: usize,
    closed: bool,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("gso", &self.gso)
            .finish_non_exhaustive()
    }
}

/// Group replies for segmented sends: a reply joins the first open group to the same destination
/// whose segment size it equals (or, if shorter, it joins as that group's last datagram); replies
/// larger than [`MAX_GSO_SEGMENT`] travel alone. Returns each reply's group; replies keep their
/// order within a group.
fn plan(
    replies: &[(&[u8], SocketAddr)],
    gso: bool,
    groups: &mut Vec<Group>,
    group_of: &mut Vec<usize>,
) {
    groups.clear();
    group_of.clear();
    for (bytes, dest) in replies {
        let len = bytes.len();
        let joinable = gso && len > 0 && len <= MAX_GSO_SEGMENT;
        let found = if joinable {
            groups.iter().position(|g| {
                !g.closed
                    && g.dest == *dest
                    && len <= g.segment
                    && g.count < MAX_SEGMENTS
                    && g.bytes + len <= MAX_GSO_BYTES
            })
        } else {
            None
        };
        if let Some(i) = found {
            let g = &mut groups[i];
            g.count += 1;
            g.bytes += len;
            g.closed = len < g.segment;
            group_of.push(i);
        } else {
            group_of.push(groups.len());
            groups.push(Group {
                dest: *dest,
                segment: len,
                count: 1,
                bytes: len,
                // A reply that cannot be segmented is a group of its own.
                closed: !joinable,
            });
        }
    }
}

impl Sender {
    /// A sender; `gso` turns segmented sends on (they switch themselves off for good if the
    /// kernel or the route refuses them).
    pub fn new(gso: bool) -> Self {
        Self {
            gso,
            group_of: Vec::new(),
            groups: Vec::new(),
            addrs: Vec::new(),
            iovs: Vec::new(),
            cmsgs: Vec::new(),
            hdrs: Vec::new(),
            starts: Vec::new(),
            fill: Vec::new(),
        }
    }

    /// Whether segmented sends are (still) in use.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Send every `(bytes, destination)` with as few `sendmmsg` calls as possible; returns how
    /// many replies the kernel accepted.
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        replies: &[(&[u8], SocketAddr)],
    ) -> io::Result<usize> {
        if replies.is_empty() {
            return Ok(0);
        }
        plan(replies, self.gso, &mut self.groups, &mut self.group_of);
        let n = self.groups.len();
        // Replies ordered by group, so each group's iovecs are contiguous.
        self.starts.clear();
        let mut at = 0;
        for g in &self.groups {
            self.starts.push(at);
            at += g.count;
        }
        self.fill.clone_from(&self.starts);
        self.iovs.clear();
        self.iovs.resize(
            replies.len(),
            libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            },
        );
        for ((bytes, _), &g) in replies.iter().zip(&self.group_of) {
            self.iovs[self.fill[g]] = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            self.fill[g] += 1;
        }
        self.addrs.clear();
        self.addrs
            .extend(self.groups.iter().map(|g| to_storage(g.dest)));
        self.cmsgs.clear();
        self.cmsgs.resize(n, [0; 4]);
        self.hdrs.clear();
        // SAFETY: all-zero mmsghdr is valid; pointers are filled in below.
        self.hdrs.resize(n, unsafe { zeroed() });
        for (i, g) in self.groups.iter().enumerate() {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = ptr::from_mut(&mut self.addrs[i].0).cast();
            h.msg_namelen = self.addrs[i].1;
            h.msg_iov = &raw mut self.iovs[self.starts[i]];
            h.msg_iovlen = g.count;
            if g.count > 1 {
                let segment = u16::try_from(g.segment).unwrap_or(u16::MAX);
                h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 32-byte, 8-aligned buffer;
                // CMSG_FIRSTHDR of a header whose control buffer is that large is non-null.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
                }
            }
        }
        let mut sent = 0;
        let mut replies_sent = 0;
        while sent < n {
            // SAFETY: headers point at addrs/iovs/cmsgs (owned by self, not resized until this
            // function returns) and at the reply buffers borrowed for the call; the kernel only
            // reads them.
            let r = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[sent..].as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                let segmented = self.groups[sent].count > 1;
                if segmented
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    )
                {
                    // This kernel, route or device cannot segment: send the rest one by one,
                    // and never try again on this socket.
                    warn!(error = %e, "UDP segmentation offload refused; sending one datagram per reply from now on");
                    self.gso = false;
                    let rest: Vec<(&[u8], SocketAddr)> = replies
                        .iter()
                        .zip(&self.group_of)
                        .filter(|(_, g)| **g >= sent)
                        .map(|(r, _)| *r)
                        .collect();
                    return Ok(replies_sent + self.send(socket, &rest)?);
                }
                if sent == 0 {
                    return Err(e);
                }
                break;
            }
            let r = usize::try_from(r).unwrap_or(0);
            replies_sent += self.groups[sent..sent + r]
                .iter()
                .map(|g| g.count)
                .sum::<usize>();
            sent += r;
        }
        Ok(replies_sent)
    }
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
        assert_eq!(Sender::new(false).send(&server, &replies).unwrap(), 5);
        let mut buf = [0u8; 16];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..5u8 {
            let (len, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i; 3]);
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn replies_group_by_client_and_size_and_a_shorter_one_ends_a_group() {
        let (a, b) = (addr(1000), addr(2000));
        let big = [0u8; 100];
        let small = [0u8; 60];
        let huge = [0u8; MAX_GSO_SEGMENT + 1];
        let replies: Vec<(&[u8], SocketAddr)> = vec![
            (&big, a),   // group 0
            (&big, b),   // group 1
            (&big, a),   // group 0
            (&small, a), // group 0, ends it (shorter)
            (&big, a),   // group 2: group 0 is closed
            (&huge, a),  // group 3: too large to segment
            (&small, b), // group 1, ends it
            (&huge, a),  // group 4: a large reply travels alone
        ];
        let (mut groups, mut group_of) = (Vec::new(), Vec::new());
        plan(&replies, true, &mut groups, &mut group_of);
        assert_eq!(group_of, [0, 1, 0, 0, 2, 3, 1, 4]);
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.count, g.segment))
                .collect::<Vec<_>>(),
            [
                (3, 100),
                (2, 100),
                (1, 100),
                (1, MAX_GSO_SEGMENT + 1),
                (1, MAX_GSO_SEGMENT + 1)
            ]
        );
        // Without segmentation every reply is its own send.
        plan(&replies, false, &mut groups, &mut group_of);
        assert_eq!(group_of, [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_group_stops_at_the_segment_limit() {
        let one = [7u8; 10];
        let replies: Vec<(&[u8], SocketAddr)> = vec![(&one, addr(1)); MAX_SEGMENTS + 3];
        let (mut groups, mut group_of) = (Vec::new(), Vec::new());
        plan(&replies, true, &mut groups, &mut group_of);
        assert_eq!(
            groups.iter().map(|g| g.count).collect::<Vec<_>>(),
            [MAX_SEGMENTS, 3]
        );
    }

    /// The client receives one datagram per reply, in order per client, with the right bytes,
    /// whether the replies went out segmented or not.
    #[test]
    fn segmented_sends_arrive_as_one_datagram_per_reply() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            segmented_sends_arrive(local);
        }
    }

    fn segmented_sends_arrive(local: &str) {
        let server = UdpSocket::bind(local).unwrap();
        let c1 = UdpSocket::bind(local).unwrap();
        let c2 = UdpSocket::bind(local).unwrap();
        for c in [&c1, &c2] {
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let (a1, a2) = (c1.local_addr().unwrap(), c2.local_addr().unwrap());
        let bodies: Vec<Vec<u8>> = (0..12u8)
            .map(|i| {
                // Equal sizes with a shorter one in the middle and a large one at the end.
                let len = match i {
                    5 => 40,
                    11 => 3000,
                    _ => 90,
                };
                vec![i; len]
            })
            .collect();
        let dest = |i: usize| if i % 3 == 2 { a2 } else { a1 };
        let replies: Vec<(&[u8], SocketAddr)> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (b.as_slice(), dest(i)))
            .collect();
        for gso in [true, false] {
            let mut sender = Sender::new(gso);
            assert_eq!(sender.send(&server, &replies).unwrap(), replies.len());
            // Loopback segments: the sender keeps segmentation on.
            assert_eq!(sender.gso(), gso);
            for (client, want) in [(&c1, a1), (&c2, a2)] {
                let mut buf = [0u8; 4096];
                for (i, body) in bodies.iter().enumerate().filter(|(i, _)| dest(*i) == want) {
                    let (len, from) = client.recv_from(&mut buf).unwrap();
                    assert_eq!(from, server.local_addr().unwrap());
                    assert_eq!(
                        &buf[..len],
                        body.as_slice(),
                        "reply {i} (gso {gso}, {local})"
                    );
                }
            }
        }
    }
}
