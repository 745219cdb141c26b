//! The API socket file, handled safely: `--api-socket` may name a path that
//! exists, and nothing but a stale socket is ever replaced.
//!
//! - The path itself is looked at without following links: a symbolic link,
//!   a regular file, a directory (anything but a socket) is refused and left
//!   as it is. A socket someone answers on is another agent (refused); one
//!   nobody answers on is stale and removed.
//! - A missing parent directory is created 0700.
//! - The socket is born 0600: it is bound in a fresh private directory
//!   (0700, next to the target), made 0600 there, then hard-linked to the
//!   target name (`link(2)` never replaces an existing name) and its private
//!   name removed. No process can connect to it before it is root-only, and
//!   the process umask is never touched.
//! - At shutdown the file is removed only if it is still the socket this
//!   agent made (same device and inode).
use std::{
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create {}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("another agent already serves {} (stop it, or pass --api-socket)", path.display())]
    InUse { path: PathBuf },
    #[error(
        "refusing --api-socket {}: it is {what}, not a socket (links are not followed; nothing \
         but a stale socket is replaced: move it away or pass another path)",
        path.display()
    )]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("cannot inspect --api-socket {}", path.display())]
    Inspect { path: PathBuf, source: std::io::Error },
    #[error("cannot remove stale socket {}", path.display())]
    Stale { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on --api-socket {}", path.display())]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("cannot restrict {} to root", path.display())]
    Permissions { path: PathBuf, source: std::io::Error },
}

/// Identity of the socket file this agent created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
}

/// What a non-socket file is, in words.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a socket"
    }
}

/// Clear the way for a new socket at `path`: nothing there, or a stale
/// socket (removed). Anything else is an error and stays.
fn clear(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(SocketError::Inspect { path: path.to_path_buf(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
            what: kind_of(meta.file_type()),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse { path: path.to_path_buf() }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| SocketError::Stale { path: path.to_path_buf(), source }),
        Err(source) => Err(SocketError::Inspect { path: path.to_path_buf(), source }),
    }
}

/// A private directory next to `path` (0700, a fresh name).
fn private_dir(parent: &Path, name: &str) -> Result<PathBuf, SocketError> {
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let dir = parent.join(format!(
            ".{name}.{}.{}.{attempt}",
            std::process::id(),
            nanos.subsec_nanos()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => return Err(SocketError::CreateDir { path: dir, source }),
        }
    }
    Err(SocketError::CreateDir {
        path: parent.to_path_buf(),
        source: last.unwrap_or_else(|| std::io::Error::other("no fresh name")),
    })
}

/// Before anything is loaded: refuse a path that is there and is not a
/// socket (the same check [`bind`] makes, without touching anything).
pub fn preflight(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            Err(SocketError::NotASocket { path: path.to_path_buf(), what: kind_of(m.file_type()) })
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Inspect { path: path.to_path_buf(), source }),
    }
}

/// Bind the API socket at `path` (see the module documentation).
pub fn bind(path: &Path) -> Result<(UnixListener, SocketId), SocketError> {
    let parent =
        path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    if std::fs::symlink_metadata(parent).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| SocketError::CreateDir { path: parent.to_path_buf(), source })?;
    }
    clear(path)?;
    let name = path.file_name().map_or_else(|| "api.sock".into(), |n| n.to_string_lossy());
    let dir = private_dir(parent, &name)?;
    let result = bind_in(&dir, path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bind_in(dir: &Path, path: &Path) -> Result<(UnixListener, SocketId), SocketError> {
    let tmp = dir.join("s");
    let listener = UnixListener::bind(&tmp)
        .map_err(|source| SocketError::Listen { path: path.to_path_buf(), source })?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| SocketError::Permissions { path: tmp.clone(), source })?;
    if let Err(e) = std::fs::hard_link(&tmp, path) {
        return Err(match e.kind() {
            // Someone made the name between the check and now: say what it is.
            ErrorKind::AlreadyExists => match clear(path) {
                Err(err) => err,
                Ok(()) => SocketError::Listen { path: path.to_path_buf(), source: e },
            },
            _ => SocketError::Listen { path: path.to_path_buf(), source: e },
        });
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|source| SocketError::Inspect { path: path.to_path_buf(), source })?;
    Ok((listener, SocketId { dev: meta.dev(), ino: meta.ino() }))
}

/// Remove the socket file at `path` if it is still the one with `id`.
pub fn remove(path: &Path, id: SocketId) {
    let ours = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_socket() && SocketId { dev: m.dev(), ino: m.ino() } == id);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("eo-sock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[tokio::test]
    async fn never_replaces_what_is_not_a_socket() {
        let d = scratch("refuse");
        let file = d.join("precious.txt");
        std::fs::write(&file, "keep me").expect("file");
        assert!(matches!(preflight(&file), Err(SocketError::NotASocket { .. })));
        assert!(preflight(&d.join("absent.sock")).is_ok());
        let err = bind(&file).expect_err("a regular file");
        assert!(err.to_string().contains("a regular file"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("still there"), "keep me");

        let link = d.join("link.sock");
        symlink(&file, &link).expect("symlink");
        let err = bind(&link).expect_err("a symlink to a file");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("target intact"), "keep me");
        assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());

        let dangling = d.join("dangling.sock");
        symlink(d.join("nowhere"), &dangling).expect("symlink");
        assert!(matches!(bind(&dangling), Err(SocketError::NotASocket { .. })));
        assert!(!d.join("nowhere").exists(), "a dangling link must not be followed");

        let sub = d.join("dir.sock");
        std::fs::create_dir(&sub).expect("dir");
        assert!(matches!(bind(&sub), Err(SocketError::NotASocket { what: "a directory", .. })));

        // A link to a live socket is refused too (not followed, not replaced).
        let real = d.join("real.sock");
        let (_l, _) = bind(&real).expect("bind");
        let to_live = d.join("to-live.sock");
        symlink(&real, &to_live).expect("symlink");
        assert!(matches!(bind(&to_live), Err(SocketError::NotASocket { .. })));
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn root_only_from_birth_and_stale_sockets_replaced() {
        let d = scratch("mode");
        let path = d.join("run/egress-agent/api.sock");
        let (l, id) = bind(&path).expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        // It answers (the listener is reachable through the final name).
        let c = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(l.accept(), c);
        assert!(accepted.is_ok() && connected.is_ok());
        // A second bind while it answers: in use.
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        // Stale (the listener gone): replaced.
        drop(l);
        let (_l2, id2) = bind(&path).expect("stale socket replaced");
        assert_ne!(id, id2);
        // Removal only of our own socket: the old id does not match any more.
        remove(&path, id);
        assert!(path.exists());
        remove(&path, id2);
        assert!(!path.exists());
        assert!(leftovers(path.parent().expect("parent")).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
