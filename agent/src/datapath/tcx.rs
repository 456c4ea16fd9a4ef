//! TCX attachments without links (`BPF_PROG_ATTACH` / `BPF_PROG_DETACH` / `BPF_PROG_QUERY` on a
//! `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS` hook), by raw `bpf(2)` calls.
//!
//! A TCX link lives as long as its file descriptor or its pin in bpffs. Where the host refuses
//! to pin links (`BPF_OBJ_PIN` answers EPERM on some kernels and sandboxes), a link would die
//! with the agent and take enforcement with it. A program attached to the hook itself, like a
//! tc filter, stays until it is detached: the agent uses that instead of falling back to tc
//! clsact, whose hook costs more per packet (clsact on a veth costs about 5–10 % of a small-packet
//! UDP stream here; see docs/benchmarks.md). A restarted agent finds its programs at the hook by
//! name and replaces them atomically (`BPF_F_REPLACE`): no packet passes unchecked in between.

use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd};

/// `BPF_TCX_INGRESS`.
pub const TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS`.
pub const TCX_EGRESS: u32 = 47;

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_F_REPLACE`: replace the program given by `replace_bpf_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;
/// `BPF_F_BEFORE`: with no relative program, attach in front of every other one.
const BPF_F_BEFORE: u32 = 1 << 3;

/// `union bpf_attr` for `BPF_PROG_ATTACH` and `BPF_PROG_DETACH`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

/// `union bpf_attr` for `BPF_PROG_QUERY`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: `attr` is a live, correctly laid out `bpf_attr` prefix of the given size; the
    // kernel reads (and for queries writes) only within it and the buffers it points to.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A program at a TCX hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// Program id.
    pub prog_id: u32,
    /// Id of the link that holds it, 0 when it is attached without a link.
    pub link_id: u32,
}

/// The programs TCX runs at `attach_type` of `ifindex`, in order.
pub fn query(ifindex: u32, attach_type: u32) -> std::io::Result<Vec<Attached>> {
    // The count first, then the ids (a few programs at most; retried if they grew between).
    for _ in 0..4 {
        let mut q = QueryAttr {
            target_ifindex: ifindex,
            attach_type,
            ..QueryAttr::default()
        };
        bpf(BPF_PROG_QUERY, &mut q)?;
        let n = q.count as usize;
        let mut progs = vec![0u32; n];
        let mut links = vec![0u32; n];
        let mut q = QueryAttr {
            target_ifindex: ifindex,
            attach_type,
            prog_ids: progs.as_mut_ptr() as u64,
            link_ids: links.as_mut_ptr() as u64,
            count: q.count,
            ..QueryAttr::default()
        };
        match bpf(BPF_PROG_QUERY, &mut q) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => continue,
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let n = (q.count as usize).min(n);
        return Ok(progs[..n]
            .iter()
            .zip(&links[..n])
            .map(|(&prog_id, &link_id)| Attached { prog_id, link_id })
            .collect());
    }
    Err(std::io::Error::other(
        "the TCX hook kept changing while it was queried",
    ))
}

/// Attaches `prog` at the hook without a link: in place of `replace` (atomically) when given,
/// else in front of the programs already there.
pub fn attach(
    ifindex: u32,
    attach_type: u32,
    prog: BorrowedFd<'_>,
    replace: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let mut a = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        attach_flags: BPF_F_BEFORE,
        ..AttachAttr::default()
    };
    if let Some(old) = replace {
        a.attach_flags = BPF_F_REPLACE;
        a.replace_bpf_fd = fd_u32(old);
    }
    bpf(BPF_PROG_ATTACH, &mut a)
}

/// Detaches `prog` (attached without a link) from the hook.
pub fn detach(ifindex: u32, attach_type: u32, prog: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut a = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: fd_u32(prog),
        attach_type,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_DETACH, &mut a)
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_fd().as_raw_fd()).expect("file descriptors are non-negative")
}

/// The programs named `name` (as the kernel keeps it: at most 15 bytes) attached without a link
/// at the hook, with a file descriptor of each.
pub fn ours(
    ifindex: u32,
    attach_type: u32,
    name: &str,
) -> std::io::Result<Vec<(u32, aya::programs::ProgramFd)>> {
    let kernel_name = &name.as_bytes()[..name.len().min(15)];
    let wanted: Vec<u32> = query(ifindex, attach_type)?
        .into_iter()
        .filter(|a| a.link_id == 0)
        .map(|a| a.prog_id)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if wanted.contains(&info.id()) && info.name() == kernel_name {
            let fd = info.fd().map_err(std::io::Error::other)?;
            out.push((info.id(), fd));
        }
    }
    Ok(out)
}
