//! Who may read /metrics: a client that presented a certificate the client
//! CA verified (checked in the TLS handshake, [`super::tls`]), or one that
//! sent `Authorization: Bearer <token>` with the token of `--metrics-token-file`.
//! Either suffices when both are configured; with neither, /metrics is open.
//! /healthz and /readyz never ask (the kubelet's probes carry no credentials).
//!
//! The token file is read again when its modification time changes (a
//! rotated Kubernetes Secret), and compared in constant time.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --metrics-token-file {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--metrics-token-file {} holds no token", path.display())]
    Empty { path: PathBuf },
}

/// What a request to /metrics gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No credentials: 401.
    Unauthenticated,
    /// Credentials that do not match: 403.
    Forbidden,
}

/// The bearer token of a file, re-read when the file changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// (modification time it was read at, token)
    cached: Mutex<(Option<SystemTime>, Vec<u8>)>,
}

impl TokenFile {
    /// Read it now: a missing or empty file is an error at start.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let (mtime, token) = read_token(path)?;
        Ok(Self { path: path.to_path_buf(), cached: Mutex::new((mtime, token)) })
    }

    /// Whether `presented` is the token. A file that cannot be read any
    /// more keeps the last token it held (logged).
    fn matches(&self, presented: &[u8]) -> bool {
        let Ok(mut c) = self.cached.lock() else { return false };
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime != c.0 {
            match read_token(&self.path) {
                Ok(fresh) => *c = fresh,
                Err(e) => tracing::warn!("{e}: keeping the previous token"),
            }
        }
        constant_time_eq(&c.1, presented)
    }
}

fn read_token(path: &Path) -> Result<(Option<SystemTime>, Vec<u8>), TokenError> {
    let read = |source| TokenError::Read { path: path.to_path_buf(), source };
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read(path).map_err(read)?;
    let token = text.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(TokenError::Empty { path: path.to_path_buf() });
    }
    Ok((mtime, token))
}

/// Equal contents, in a time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The policy of /metrics.
#[derive(Debug, Default)]
pub struct Auth {
    /// Client certificates are verified against a CA (TLS only).
    pub client_ca: bool,
    pub token: Option<TokenFile>,
}

impl Auth {
    /// Whether /metrics asks for credentials at all.
    pub fn required(&self) -> bool {
        self.client_ca || self.token.is_some()
    }

    /// `client_cert`: this connection presented a certificate the client CA
    /// verified. `authorization`: the request's Authorization header.
    pub fn check(&self, client_cert: bool, authorization: Option<&[u8]>) -> Decision {
        if !self.required() || (self.client_ca && client_cert) {
            return Decision::Allowed;
        }
        let Some(header) = authorization else { return Decision::Unauthenticated };
        let bearer = header
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, token)| token.trim_ascii());
        match (&self.token, bearer) {
            (Some(t), Some(presented)) if t.matches(presented) => Decision::Allowed,
            _ => Decision::Forbidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("token");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("eo-auth-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn open_without_policy() {
        let a = Auth::default();
        assert!(!a.required());
        assert_eq!(a.check(false, None), Decision::Allowed);
    }

    #[test]
    fn client_certificate_alone() {
        let a = Auth { client_ca: true, token: None };
        assert_eq!(a.check(true, None), Decision::Allowed);
        assert_eq!(a.check(false, None), Decision::Unauthenticated);
        assert_eq!(a.check(false, Some(b"Bearer x")), Decision::Forbidden);
    }

    #[test]
    fn bearer_token_and_rotation() {
        let d = tmpdir("rotate");
        let p = token_file(&d, "s3cret-token-0123456789\n");
        let a = Auth { client_ca: false, token: Some(TokenFile::load(&p).expect("load")) };
        assert_eq!(a.check(false, Some(b"Bearer s3cret-token-0123456789")), Decision::Allowed);
        assert_eq!(a.check(false, Some(b"bearer  s3cret-token-0123456789 ")), Decision::Allowed);
        assert_eq!(a.check(false, Some(b"Bearer s3cret-token-012345678")), Decision::Forbidden);
        assert_eq!(a.check(false, Some(b"Basic czNjcmV0")), Decision::Forbidden);
        assert_eq!(a.check(false, Some(b"Bear")), Decision::Forbidden);
        assert_eq!(a.check(false, None), Decision::Unauthenticated);
        // Without a client CA, a certificate alone does not authenticate.
        assert_eq!(a.check(true, None), Decision::Unauthenticated);
        // Rotated: the new token is taken (a different mtime), the old one refused.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, "next-token-abcdefghijkl").expect("rotate");
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(later))
            .expect("mtime");
        assert_eq!(a.check(false, Some(b"Bearer next-token-abcdefghijkl")), Decision::Allowed);
        assert_eq!(a.check(false, Some(b"Bearer s3cret-token-0123456789")), Decision::Forbidden);
        // Unreadable later: the last token stays.
        std::fs::remove_file(&p).expect("rm");
        assert_eq!(a.check(false, Some(b"Bearer next-token-abcdefghijkl")), Decision::Allowed);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_or_missing_token_file_is_refused_at_start() {
        let d = tmpdir("empty");
        let p = token_file(&d, " \n");
        assert!(matches!(TokenFile::load(&p), Err(TokenError::Empty { .. })));
        assert!(matches!(TokenFile::load(&d.join("nope")), Err(TokenError::Read { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn both_mechanisms_either_suffices() {
        let d = tmpdir("both");
        let p = token_file(&d, "tok-0123456789abcdef");
        let a = Auth { client_ca: true, token: Some(TokenFile::load(&p).expect("load")) };
        assert_eq!(a.check(true, None), Decision::Allowed);
        assert_eq!(a.check(false, Some(b"Bearer tok-0123456789abcdef")), Decision::Allowed);
        assert_eq!(a.check(false, None), Decision::Unauthenticated);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
