//! The agent's end of the datapath's event ring buffer (`CATALYST_EVENTS`, a
//! `BPF_MAP_TYPE_RINGBUF`).
//!
//! The programs reserve and commit records on the CPU that handles the packet; the agent reads
//! them on another. Both ends share two positions: the producer position, which every reserve
//! writes, and the consumer position, which every reserve reads to find free space. A reader that
//! published its position after every record and re-read the producer's whenever it caught up
//! (as a generic ring-buffer reader does) moved both cache lines between the CPUs for every
//! event while it drained: a new connection, which sends several events, then paid for those
//! transfers in its reserves. This reader takes the producer position once per pass, reads every
//! record committed up to it, and publishes its own position once per pass (and after every
//! eighth of the ring, so that a long pass frees space as it goes).
//!
//! Layout (the kernel's, `kernel/bpf/ringbuf.c`): the consumer page (read-write, the consumer
//! position at offset 0), then the producer page (read-only, the producer position at offset 0)
//! followed by the data pages mapped twice in a row, so a record that wraps around the end of the
//! ring reads as one contiguous slice. Each record is an 8-byte header (length with the busy and
//! discard bits, page offset) and the data, rounded up to 8 bytes.

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};

/// `BPF_RINGBUF_HDR_SZ`.
const HEADER: usize = 8;
/// `BPF_RINGBUF_BUSY_BIT`: the record is reserved but not committed yet.
const BUSY: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: the record was discarded; skip it.
const DISCARD: u32 = 1 << 30;

/// One `mmap` of the ring buffer map, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> std::io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh shared mapping of a ring-buffer map fd; the kernel checks the ranges and
        // protections it allows (the consumer page writable, the rest read-only).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Mapping::new` and is not used after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reader of the event ring buffer.
pub struct EventRing {
    /// Keeps the map (and its fd) alive as long as the mappings.
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    /// Ring size minus one (the size is a power of two).
    mask: u64,
    /// Next record to read.
    pos: u64,
    /// The consumer position the kernel last saw.
    published: u64,
    /// Bytes read between two publications within one pass.
    publish_every: u64,
}

// SAFETY: the mappings are owned by this value and only read or written through `&mut self`
// (the shared positions with atomics); moving the value to another thread moves that ownership.
unsafe impl Send for EventRing {}

impl EventRing {
    /// The reader of `map`, which must be a ring buffer.
    pub fn new(map: Map) -> anyhow::Result<Self> {
        let Map::RingBuf(map) = map else {
            anyhow::bail!("the event map is not a ring buffer");
        };
        let size = map
            .info()
            .context("cannot read the event ring buffer's size")?
            .max_entries();
        anyhow::ensure!(
            size.is_power_of_two(),
            "the event ring buffer's size {size} is not a power of two"
        );
        let size = usize::try_from(size)?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .context("cannot read the page size")?;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)
            .context("cannot map the event ring buffer's consumer page")?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)
            .context("cannot map the event ring buffer's data")?;
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            pos: 0,
            published: 0,
            publish_every: (size as u64 / 8).max(1),
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.pos;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write and page aligned; the kernel keeps the
        // consumer position (an unsigned long, 64-bit here) at its start.
        unsafe { self.consumer.ptr.cast::<AtomicU64>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, the producer position at the start of the producer page.
        unsafe { self.producer.ptr.cast::<AtomicU64>().as_ref() }
    }

    fn publish(&mut self) {
        if self.pos != self.published {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    /// Reads every record committed when the pass starts, in order, handing each record's data
    /// to `f`; returns how many were read. A record still being written ends the pass (the next
    /// one continues from it).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let end = self.producer_pos().load(Ordering::Acquire);
        let mut read = 0;
        while self.pos < end {
            let off = usize::try_from(self.pos & self.mask).unwrap_or_default();
            // SAFETY: `off` is inside the first copy of the data pages, 8-byte aligned (records
            // are); the header is written by the kernel and read atomically.
            let header = unsafe {
                self.producer
                    .ptr
                    .add(self.page + off)
                    .cast::<AtomicU32>()
                    .as_ref()
            }
            .load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            if header & DISCARD == 0 {
                // SAFETY: a committed record of `len` bytes after its header; the data pages are
                // mapped twice in a row, so the record is contiguous even when it wraps, and
                // `len` is at most the ring's size. The producer does not reuse the bytes before
                // the consumer position passes them, which happens after `f` returns.
                let data = unsafe {
                    std::slice::from_raw_parts(
                        self.producer.ptr.add(self.page + off + HEADER).as_ptr(),
                        len,
                    )
                };
                f(data);
                read += 1;
            }
            self.pos += (HEADER + len).next_multiple_of(8) as u64;
            if self.pos - self.published >= self.publish_every {
                self.publish();
            }
        }
        self.publish();
        read
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
