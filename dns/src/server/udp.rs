//! The lean UDP path (DESIGN §4.7): worker threads that take turns receiving from one socket
//! (`udp_socket: shared`) or each read their own `SO_REUSEPORT` socket (`per_worker`), queries
//! parsed with hickory-proto, answers from the worker's answer cache with the id patched,
//! everything else resolved by the catalog on the same thread.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::rr::RecordType;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use super::{
    message::{MAX_UDP_PAYLOAD, ParseFailure, ecs_net, error_reply, parse_query},
    mmsg::{Batch, Sender},
};
use crate::{
    cache::{AnswerCache, Hit, QKey, patch},
    catalog::Catalog,
    metrics::QueryTally,
};

/// Bind one UDP socket with `SO_REUSEPORT` (per-worker sockets share the address).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Room for bursts while a worker is busy.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(Duration::from_millis(250)))?;
    Ok(s.into())
}

/// How the UDP workers of one listen address run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Worker threads, each with its own socket.
    pub workers: usize,
    /// Answer-cache entries per worker (0 = no cache).
    pub cache_entries: usize,
    /// Answer from the EDNS Client Subnet rather than the source address.
    pub ecs: bool,
    /// Datagrams per `recvmmsg`/`sendmmsg`; 1 = `recv_from`/`send_to`.
    pub batch: usize,
    /// Send a batch's same-size replies to one client as one segmented send (`UDP_SEGMENT`).
    pub gso: bool,
    /// All workers read one socket (else each its own `SO_REUSEPORT` socket).
    pub shared_socket: bool,
}

/// Start `opts.workers` threads serving `addr`.
pub fn spawn(
    catalog: &Arc<Catalog>,
    addr: SocketAddr,
    opts: Options,
    stop: &Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    let shared = if opts.shared_socket {
        Some((bind_reuseport(addr)?, Arc::new(Mutex::new(()))))
    } else {
        None
    };
    for i in 0..opts.workers.max(1) {
        let (socket, receiver) = match &shared {
            Some((s, lock)) => (s.try_clone()?, Some(lock.clone())),
            None => (bind_reuseport(addr)?, None),
        };
        let catalog = catalog.clone();
        let stop = stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || {
                if opts.batch > 1 {
                    batched_worker(&socket, receiver.as_deref(), &catalog, opts, &stop);
                } else {
                    worker(&socket, &catalog, opts.cache_entries, opts.ecs, &stop);
                }
            })?;
        handles.push(h);
    }
    Ok(handles)
}

fn worker(
    socket: &UdpSocket,
    catalog: &Catalog,
    cache_entries: usize,
    ecs: bool,
    stop: &AtomicBool,
) {
    let local = socket
        .local_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let mut w = Worker::new(catalog, local, ecs, cache_entries);
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                continue;
            }
        };
        out.clear();
        let reply = w.handle(&buf[..len], src, &mut out);
        w.flush();
        if reply && let Err(e) = socket.send_to(&out, src) {
            debug!(error = %e, %src, "UDP send failed");
        }
    }
}

/// A worker that reads and answers in batches. Workers sharing one socket take turns as its
/// receiver (`receiver`, leader/follower): the receiver keeps the turn while its batches come
/// back short (no backlog: the others stay asleep, no wakeup per datagram) and hands it on after
/// a full batch (a backlog: the next worker receives while this one answers).
fn batched_worker(
    socket: &UdpSocket,
    receiver: Option<&Mutex<()>>,
    catalog: &Catalog,
    opts: Options,
    stop: &AtomicBool,
) {
    let local = socket
        .local_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let (ecs, size) = (opts.ecs, opts.batch);
    let mut w = Worker::new(catalog, local, ecs, opts.cache_entries);
    let mut batch = Batch::new(size);
    let mut sender = Sender::new(opts.gso);
    let mut outs: Vec<Vec<u8>> = (0..size).map(|_| Vec::with_capacity(1232)).collect();
    let mut dests: Vec<Option<SocketAddr>> = vec![None; size];
    let mut turn = None;
    while !stop.load(Ordering::Relaxed) {
        if turn.is_none()
            && let Some(lock) = receiver
        {
            turn = Some(
                lock.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
        let got = batch.recv(socket);
        if matches!(got, Ok(n) if n >= size) {
            turn = None;
        }
        let n = match got {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                continue;
            }
        };
        for i in 0..n {
            dests[i] = None;
            outs[i].clear();
            if let Some((pkt, src)) = batch.packet(i)
                && w.handle(pkt, src, &mut outs[i])
            {
                dests[i] = Some(src);
            }
        }
        w.flush();
        let replies: Vec<(&[u8], SocketAddr)> = (0..n)
            .filter_map(|i| dests[i].map(|d| (outs[i].as_slice(), d)))
            .collect();
        if let Err(e) = sender.send(socket, &replies) {
            debug!(error = %e, "UDP send failed");
        }
    }
}

/// What a UDP worker keeps between datagrams: its answer cache and its counts (flushed into the
/// shared metrics with [`Worker::flush`]), and what it answers with.
pub struct Worker<'a> {
    catalog: &'a Catalog,
    local: IpAddr,
    ecs: bool,
    cache: AnswerCache,
    tally: QueryTally,
}

impl<'a> Worker<'a> {
    /// A worker answering for `catalog` on `local`, with `cache_entries` cached answers;
    /// `ecs`: answer from the EDNS Client Subnet rather than the source address.
    pub fn new(catalog: &'a Catalog, local: IpAddr, ecs: bool, cache_entries: usize) -> Self {
        Self {
            catalog,
            local,
            ecs,
            cache: AnswerCache::new(cache_entries),
            tally: QueryTally::default(),
        }
    }

    /// Add the counts since the last flush to the shared metrics.
    pub fn flush(&mut self) {
        self.tally.flush(&self.catalog.metrics);
    }

    /// Answer one datagram into `out`; false means no response.
    pub fn handle(&mut self, pkt: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
        handle(pkt, src, self, out)
    }
}

fn handle(pkt: &[u8], src: SocketAddr, w: &mut Worker<'_>, out: &mut Vec<u8>) -> bool {
    let Worker {
        catalog,
        local,
        ecs,
        cache,
        tally,
    } = w;
    let (catalog, local, ecs) = (*catalog, *local, *ecs);
    let q = match parse_query(pkt) {
        Ok(q) => q,
        Err(ParseFailure::Drop) => {
            tally.malformed();
            return false;
        }
        Err(ParseFailure::Reply { id, rcode, op_code }) => {
            tally.malformed();
            out.extend_from_slice(&error_reply(id, op_code, rcode));
            tally.query(rcode, RecordType::Unknown(0));
            return true;
        }
    };
    let qtype = q.query.query_type();
    let key = QKey {
        name: q.query.name().clone(),
        qtype: u16::from(qtype),
        qclass: u16::from(q.query.query_class()),
        edns: match q.edns {
            None => 0,
            Some(e) if e.dnssec_ok => 2,
            Some(_) => 1,
        },
        ecs: q.edns.and_then(|e| e.ecs),
    };
    let bestwho = match (ecs, key.ecs.and_then(ecs_net)) {
        (true, Some(net)) => net.network(),
        _ => src.ip().to_canonical(),
    };
    cache.sync_generation(catalog.generation());
    let version = catalog.version();
    let limit = usize::from(
        q.edns
            .map_or(512, |e| e.payload.clamp(512, MAX_UDP_PAYLOAD)),
    );
    let mut forced_pick = None;
    match (cache.get(&key, bestwho, version), q.question_end) {
        (Some(Hit::Bytes(bytes, rcode)), Some(question_end)) if bytes.len() <= limit => {
            out.extend_from_slice(bytes);
            patch(out, pkt, question_end);
            tally.cache_hit();
            tally.query(rcode, qtype);
            return true;
        }
        (Some(Hit::Fill(slot)), _) => forced_pick = Some(slot),
        _ => {}
    }
    tally.cache_miss();
    let (bytes, rcode, policy, bestwho) = catalog.answer_udp(&q, src, local, forced_pick);
    tally.query(rcode, qtype);
    // Only full answers are cached: a truncated one depends on this requester's payload size.
    if bytes.len() > 3 && bytes[2] & 0x02 == 0 {
        cache.insert(key, bestwho, policy, version, &bytes, rcode);
    }
    out.extend_from_slice(&bytes);
    true
}
