//! File-change notification through the `notify` crate (inotify on Linux), so a policy or config
//! edit is noticed at once instead of at the next poll. Polling stays as the fallback (and
//! catches what a watch cannot see, such as a directory that did not exist when the watch was
//! set up).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::Notify;

/// Watches directories for changes to the files in them.
pub struct FileWatch {
    watcher: notify::RecommendedWatcher,
    shared: Arc<Shared>,
    watched: Vec<PathBuf>,
}

/// What the watcher's thread hands to [`FileWatch::changed`].
#[derive(Default)]
struct Shared {
    /// Woken on a change; one stored wake-up stands for any number of events.
    changed: Notify,
    /// The last error the watcher reported, taken by the next `changed`.
    error: Mutex<Option<notify::Error>>,
}

/// Whether an event is a change worth a reload: not an open or a read (the agent reading its
/// own policy files must not wake it up again), but a write closed, a create, a modify, a
/// rename or a removal.
fn worth_a_reload(kind: EventKind) -> bool {
    match kind {
        EventKind::Access(access) => access == AccessKind::Close(AccessMode::Write),
        EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

fn io_error(e: notify::Error) -> std::io::Error {
    match e.kind {
        notify::ErrorKind::Io(io) => io,
        _ => std::io::Error::other(e.to_string()),
    }
}

impl FileWatch {
    /// Watches the directory of every path (the path itself when it is a directory). Paths that
    /// cannot be watched are skipped with a log line; polling still covers them.
    pub fn new(paths: &[PathBuf]) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let on_event = shared.clone();
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if worth_a_reload(ev.kind) => on_event.changed.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    *on_event
                        .error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    on_event.changed.notify_one();
                }
            })
            .map_err(io_error)?;
        let mut me = Self {
            watcher,
            shared,
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
            if let Err(error) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::debug!(dir = %dir.display(), %error, "cannot watch directory; polling covers it");
                continue;
            }
            self.watched.push(dir);
        }
    }

    /// Waits until something changed in a watched directory (every event since the last call
    /// counts as one change); an error the watcher reported meanwhile is returned instead.
    pub async fn changed(&self) -> std::io::Result<()> {
        self.shared.changed.notified().await;
        let error = self
            .shared
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        error.map_or(Ok(()), |e| Err(io_error(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("catalyst-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn quiet(w: &FileWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(300), w.changed())
            .await
            .is_err()
    }

    async fn reported(w: &FileWatch) {
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("change reported within 5 s")
            .unwrap();
    }

    #[tokio::test]
    async fn a_write_in_a_watched_directory_is_reported() {
        let dir = scratch("write");
        let file = dir.join("p.yaml");
        std::fs::write(&file, "a").unwrap();
        let w = FileWatch::new(std::slice::from_ref(&file)).unwrap();
        assert!(quiet(&w).await, "nothing changed yet");
        std::fs::write(&file, "b").unwrap();
        reported(&w).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reading_the_watched_files_is_not_a_change() {
        // The agent reads its own policy files on every reload: those opens must not wake it.
        let dir = scratch("read");
        let file = dir.join("p.yaml");
        std::fs::write(&file, "a").unwrap();
        let w = FileWatch::new(std::slice::from_ref(&file)).unwrap();
        for _ in 0..3 {
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "a");
        }
        assert!(quiet(&w).await, "a read was reported as a change");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_file_renamed_into_place_and_a_removal_are_reported() {
        // How editors and Kubernetes ConfigMap volumes replace files: write aside, rename over.
        let dir = scratch("rename");
        let file = dir.join("p.yaml");
        std::fs::write(&file, "a").unwrap();
        let w = FileWatch::new(std::slice::from_ref(&dir)).unwrap();
        let tmp = dir.join(".p.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        reported(&w).await;
        std::fs::rename(&tmp, &file).unwrap();
        reported(&w).await;
        std::fs::remove_file(&file).unwrap();
        reported(&w).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
