//! The floor of the hook for `bench datapath`: an empty classifier — two instructions,
//! `r0 = TCX_NEXT; exit` — attached by TCX at exactly the hooks the agent uses (ingress and
//! egress of every lab pod's host-side interface). Its row is the cost of running *a* TC program
//! there at all; the agent's rows are compared against it (issue 14: within 5 %).
//!
//! Loaded with the raw `bpf(2)` calls (no object file, no loader): `BPF_PROG_LOAD` of a
//! `BPF_PROG_TYPE_SCHED_CLS` program, one `BPF_LINK_CREATE` per hook. The links are file
//! descriptors owned by [`EmptyClassifier`]; dropping it closes them, which detaches the program
//! (nothing is pinned, nothing is left behind if the bench dies).

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `TCX_NEXT` (= `TC_ACT_UNSPEC`): what the agent's programs return for an allowed packet.
const TCX_NEXT: i32 = -1;

/// `union bpf_attr` for `BPF_PROG_LOAD` (the leading fields this call uses).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with the `tcx` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    pad: u32,
    expected_revision: u64,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr`, and
    // its size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("bpf(2) returned no fd"))?;
    // SAFETY: a successful BPF_PROG_LOAD / BPF_LINK_CREATE returns a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program and its links; dropping it detaches everything.
pub struct EmptyClassifier {
    _links: Vec<OwnedFd>,
    _prog: OwnedFd,
}

/// Attaches the empty classifier at TCX ingress and egress of each of `ifaces`, which live in
/// network namespace `netns` (a name under /run/netns).
pub fn attach(netns: &str, ifaces: &[String]) -> anyhow::Result<EmptyClassifier> {
    let ifaces = ifaces.to_vec();
    let ns = netns.to_owned();
    // Interface indexes are resolved in the caller's namespace: do it all on a thread that
    // joins `netns` (and ends there), leaving the rest of the process where it was.
    catalyst_tests::lab::in_netns(netns, move || attach_here(&ns, &ifaces))?
}

/// What `BPF_PROG_TEST_RUN` itself costs per packet, measured on the empty classifier with a
/// 54-byte TCP packet as the datapath benchmark sends: the mean of `repeat` runs in one call
/// (median of 5 calls), and the mean of `singles` calls of one run each. The programs' figures
/// include this.
pub fn test_run_floor(repeat: u32, singles: u32) -> anyhow::Result<(f64, f64)> {
    let prog = load()?;
    let mut pkt = [0u8; 54];
    pkt[12..16].copy_from_slice(&[0x08, 0x00, 0x45, 0]);
    let run = |repeat: u32| -> anyhow::Result<u32> {
        let mut out = vec![0u8; pkt.len() + 256];
        let mut attr = TestRun {
            prog_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&prog))?,
            data_size_in: u32::try_from(pkt.len())?,
            data_size_out: u32::try_from(out.len())?,
            data_in: pkt.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..TestRun::default()
        };
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr)
            .context("BPF_PROG_TEST_RUN of the empty classifier")?;
        Ok(attr.duration)
    };
    let mut repeated = (0..5)
        .map(|_| run(repeat))
        .collect::<anyhow::Result<Vec<_>>>()?;
    repeated.sort_unstable();
    let mut total = 0u64;
    for _ in 0..singles {
        total += u64::from(run(1)?);
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    Ok((
        f64::from(repeated[2]),
        total as f64 / f64::from(singles.max(1)),
    ))
}

fn load() -> anyhow::Result<OwnedFd> {
    // Two `struct bpf_insn`: r0 = TCX_NEXT (BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm at bytes
    // 4..8); exit (BPF_JMP | BPF_EXIT).
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&TCX_NEXT.to_ne_bytes());
    insns[8] = 0x95;
    let license = CString::new("GPL").expect("no NUL");
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"catalyst_empty");
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoad::default()
    };
    bpf(BPF_PROG_LOAD, &mut load).context("cannot load the empty classifier")
}

fn attach_here(netns: &str, ifaces: &[String]) -> anyhow::Result<EmptyClassifier> {
    let prog = load()?;
    let mut links = Vec::new();
    for iface in ifaces {
        let c = CString::new(iface.as_str()).context("interface name")?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {iface} in network namespace {netns}");
        }
        for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            let mut link = LinkCreate {
                prog_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&prog))?,
                target_ifindex: ifindex,
                attach_type,
                ..LinkCreate::default()
            };
            links.push(
                bpf(BPF_LINK_CREATE, &mut link).with_context(|| {
                    format!("cannot attach the empty classifier to {iface} (TCX)")
                })?,
            );
        }
    }
    Ok(EmptyClassifier {
        _links: links,
        _prog: prog,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use catalyst_tests::require::{Need, require};

    /// `union bpf_attr` for `BPF_PROG_QUERY`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgQuery {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }

    /// How many programs TCX runs at (`iface` in `ns`, `attach_type`), by `BPF_PROG_QUERY`.
    fn tcx_count(ns: &str, iface: &str, attach_type: u32) -> u32 {
        let iface = iface.to_owned();
        catalyst_tests::lab::in_netns(ns, move || {
            let name = std::ffi::CString::new(iface).expect("name");
            // SAFETY: a NUL-terminated name, then a plain bpf(2) query on a live attr.
            unsafe {
                let mut q = ProgQuery {
                    target_ifindex: libc::if_nametoindex(name.as_ptr()),
                    attach_type,
                    ..ProgQuery::default()
                };
                let rc = libc::syscall(
                    libc::SYS_bpf,
                    16, // BPF_PROG_QUERY
                    std::ptr::from_mut(&mut q),
                    std::mem::size_of::<ProgQuery>(),
                );
                assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
                q.prog_cnt
            }
        })
        .expect("netns")
    }

    #[test]
    fn the_harness_floor_is_measured_on_the_empty_classifier() {
        if !require(
            "the_harness_floor_is_measured_on_the_empty_classifier",
            &[Need::Root],
        ) {
            return;
        }
        let (repeated, single) = super::test_run_floor(200_000, 2_000).expect("test run");
        eprintln!(
            "BPF_PROG_TEST_RUN floor: {repeated:.1} ns per repeated run, {single:.1} ns single"
        );
        assert!(
            repeated < 10_000.0,
            "{repeated} ns per run of two instructions"
        );
        assert!(single > 0.0 && single < 1_000_000.0, "{single} ns");
    }

    #[test]
    fn attaches_at_both_tcx_hooks_and_detaches_on_drop() {
        if !require(
            "attaches_at_both_tcx_hooks_and_detaches_on_drop",
            &[Need::Root],
        ) {
            return;
        }
        let ns = format!("catempty{}", std::process::id());
        let sh = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        sh(&["netns", "add", &ns]);
        let result = std::panic::catch_unwind(|| {
            sh(&[
                "-n", &ns, "link", "add", "ce0", "type", "veth", "peer", "name", "ce1",
            ]);
            let attached = super::attach(&ns, &["ce0".to_owned()]).expect("attach");
            for hook in [super::BPF_TCX_INGRESS, super::BPF_TCX_EGRESS] {
                assert_eq!(tcx_count(&ns, "ce0", hook), 1, "one program at hook {hook}");
            }
            drop(attached);
            for hook in [super::BPF_TCX_INGRESS, super::BPF_TCX_EGRESS] {
                assert_eq!(
                    tcx_count(&ns, "ce0", hook),
                    0,
                    "nothing left at hook {hook}"
                );
            }
            let err = super::attach(&ns, &["nope0".to_owned()])
                .err()
                .expect("unknown interface");
            assert!(err.to_string().contains("no interface nope0"), "{err}");
        });
        sh(&["netns", "del", &ns]);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
