//! File-change notification through inotify, so a policy or config edit is noticed at once
//! instead of at the next poll. Polling stays as the fallback (and catches what inotify cannot
//! see, such as a directory that did not exist when the watch was set up).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

/// Watches directories for changes to the files in them.
pub struct FileWatch {
    fd: AsyncFd<OwnedFd>,
    watched: Vec<PathBuf>,
}

/// What inotify reports as a change worth a reload.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB;

impl FileWatch {
    /// Watches the directory of every path (the path itself when it is a directory). Paths that
    /// cannot be watched are skipped with a log line; polling still covers them.
    pub fn new(paths: &[PathBuf]) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is an open inotify descriptor the `AsyncFd` owns from here on.
        let fd =
            unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut me = Self {
            fd,
            watched: Vec::new(),
        };
        me.set(paths);
        Ok(me)
    }

    /// Adds watches for `paths` that are not watched yet.
    pub fn set(&mut self, paths: &[PathBuf]) {
        for p in paths {
            let dir = if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            };
            if self.watched.contains(&dir) {
                continue;
            }
            let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
            if wd < 0 {
                tracing::debug!(dir = %dir.display(), error = %std::io::Error::last_os_error(),
                    "cannot watch directory; polling covers it");
                continue;
            }
            self.watched.push(dir);
        }
    }

    /// Waits until something changed in a watched directory (draining every pending event).
    pub async fn changed(&self) -> std::io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            loop {
                // SAFETY: reads into a buffer of the given length.
                let n =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    got = true;
                    continue;
                }
                let e = std::io::Error::last_os_error();
                if n < 0 && e.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                break;
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_in_a_watched_directory_is_reported() {
        let dir = std::env::temp_dir().join(format!("catalyst-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.yaml");
        std::fs::write(&file, "a").unwrap();
        let w = FileWatch::new(std::slice::from_ref(&file)).unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), w.changed()).await;
        assert!(quiet.is_err(), "nothing changed yet");
        std::fs::write(&file, "b").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
            .await
            .expect("change reported")
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
