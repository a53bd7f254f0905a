//! Who may read records: consumers authenticate with a client certificate
//! (verified during the TLS handshake) or a bearer token from a file that is
//! re-read when it changes.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tonic::{Request, Status};

/// Tokens from a file, one per line (blank lines and `#` comments ignored).
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {0} holds no token")]
    Empty(PathBuf),
}

fn parse_tokens(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

impl TokenFile {
    pub fn load(path: PathBuf) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(&path).map_err(|source| AuthError::Read { path: path.clone(), source })?;
        let tokens = parse_tokens(&text);
        if tokens.is_empty() {
            return Err(AuthError::Empty(path));
        }
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Self { path, state: Mutex::new((stamp, tokens)) })
    }

    fn tokens(&self) -> Vec<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if stamp != s.0 {
            // Fail closed: emptying or removing the file revokes every token.
            let tokens = match std::fs::read_to_string(&self.path).map(|t| parse_tokens(&t)) {
                Ok(tokens) => tokens,
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "token file unreadable; refusing all tokens");
                    Vec::new()
                }
            };
            if tokens.is_empty() {
                tracing::error!(file = %self.path.display(), "token file holds no token; refusing all tokens");
            }
            *s = (stamp, tokens);
        }
        s.1.clone()
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The consumer authentication policy of one listener.
#[derive(Clone)]
pub struct ConsumerAuth {
    tokens: Option<Arc<TokenFile>>,
    /// A verified client certificate is enough (the listener asks for one).
    accept_client_certs: bool,
    /// No authentication at all (explicit insecure mode, or loopback-only).
    open: bool,
}

impl ConsumerAuth {
    pub fn new(tokens: Option<Arc<TokenFile>>, accept_client_certs: bool) -> Self {
        Self { tokens, accept_client_certs, open: false }
    }

    /// Everyone may read (logged as a warning by whoever chooses it).
    pub fn open() -> Self {
        Self { tokens: None, accept_client_certs: false, open: true }
    }

    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.open {
            return Ok(());
        }
        if self.accept_client_certs && req.peer_certs().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        let Some(tokens) = &self.tokens else {
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization: Bearer <token> (or a client certificate)")
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        if tokens.tokens().iter().any(|t| constant_time_eq(t.as_bytes(), presented.trim().as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", t.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_are_checked_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# consumers\nalpha\n\n beta \n").unwrap();
        let auth = ConsumerAuth::new(Some(Arc::new(TokenFile::load(path.clone()).unwrap())), false);
        assert!(auth.check(&req(Some("Bearer alpha"))).is_ok());
        assert!(auth.check(&req(Some("Bearer beta"))).is_ok());
        assert_eq!(auth.check(&req(Some("Bearer gamma"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(&req(Some("alpha"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(&req(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        // rotation: a new file content takes effect (mtime changes)
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "gamma\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(1)).unwrap();
        assert!(auth.check(&req(Some("Bearer gamma"))).is_ok());
        assert!(auth.check(&req(Some("Bearer alpha"))).is_err());
        // emptying or deleting the file revokes everything
        std::fs::write(&path, "# none\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(2)).unwrap();
        assert!(auth.check(&req(Some("Bearer gamma"))).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(auth.check(&req(Some("Bearer gamma"))).is_err());
    }

    #[test]
    fn empty_or_missing_token_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(TokenFile::load(path.clone()).err().unwrap().to_string().contains("tokens"));
        let err = TokenFile::load(dir.path().join("missing")).err().unwrap().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn open_and_cert_only_policies() {
        assert!(ConsumerAuth::open().check(&req(None)).is_ok());
        let certs_only = ConsumerAuth::new(None, true);
        assert_eq!(certs_only.check(&req(Some("Bearer x"))).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
