//! bpffs: mount it when missing (DESIGN.md §6: some hosts do not mount it).

use std::{io, path::Path};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `pin_path` lies on a bpffs: mounts bpffs at `/sys/fs/bpf` when nothing is mounted
/// there, then creates `pin_path`.
pub fn ensure_bpffs(pin_path: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let root = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(root) && !is_bpffs(root).unwrap_or(false) {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            anyhow::bail!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {err} (run as root \
                 or with CAP_SYS_ADMIN, or mount it: `mount -t bpf bpf /sys/fs/bpf`)"
            );
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("cannot create pin directory {}", pin_path.display()))?;
    if !is_bpffs(pin_path).unwrap_or(false) {
        anyhow::bail!("pin path {} is not on a bpffs mount", pin_path.display());
    }
    Ok(())
}
