//! Who the agent says it is to the sink: TLS trust and client identity, credentials, and
//! extra headers.
//!
//! Credentials come from files, so they never sit in the config, a flag or the process's
//! command line, and they are never logged (the header value is marked sensitive). On
//! SIGHUP the files are read again — rotate a token without a restart. Extra headers
//! cannot replace the protocol's own (`Content-Encoding`, `Content-Type`,
//! `X-Prometheus-Remote-Write-Version`, `User-Agent`) or `Authorization`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use reqwest::header::{HeaderName, HeaderValue};

/// Headers a user may not set: the protocol's, and the one `auth` owns.
pub const RESERVED_HEADERS: [&str; 5] =
    ["content-encoding", "content-type", "x-prometheus-remote-write-version", "user-agent", "authorization"];

/// How to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// HTTP basic auth; the password is the first line of the file.
    Basic {
        username: String,
        password_file: PathBuf,
    },
    /// `Authorization: Bearer <first line of the file>`.
    Bearer {
        token_file: PathBuf,
    },
}

fn first_line(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line)
}

impl Credentials {
    /// The `Authorization` value, read from its file now.
    pub fn header(&self) -> Result<Option<HeaderValue>, String> {
        let value = match self {
            Credentials::None => return Ok(None),
            Credentials::Basic { username, password_file } => {
                use base64::Engine as _;
                let password = first_line(password_file)?;
                let raw = format!("{username}:{password}");
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
            }
            Credentials::Bearer { token_file } => format!("Bearer {}", first_line(token_file)?),
        };
        let mut v = HeaderValue::from_str(&value)
            .map_err(|_| "credentials contain characters not allowed in a header".to_string())?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

/// The current `Authorization` header, shared by every sender and replaced on SIGHUP.
#[derive(Clone, Default)]
pub struct AuthHeader(Arc<RwLock<Option<HeaderValue>>>);

impl AuthHeader {
    pub fn get(&self) -> Option<HeaderValue> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, v: Option<HeaderValue>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Re-read the credentials on every SIGHUP. A file that cannot be read keeps the
/// previous credentials and says so in one line (without the secret).
pub fn reload_on_sighup(credentials: Credentials, header: AuthHeader) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match credentials.header() {
                Ok(v) => {
                    header.set(v);
                    tracing::info!("SIGHUP: credentials re-read");
                }
                Err(e) => tracing::warn!("SIGHUP: credentials not re-read, the previous ones stay: {e}"),
            }
        }
    });
    Ok(())
}

/// TLS settings for https endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM bundle of the CAs to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, may hold the chain) and its key (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Tls {
    /// Apply to a client builder; errors name the file.
    pub fn apply(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
        if let Some(ca) = &self.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificate in it", ca.display()));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                // rustls takes one PEM holding the key and the certificate chain.
                let mut pem = read(key)?;
                pem.push(b'\n');
                pem.extend_from_slice(&read(cert)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!("{} / {}: not a PEM certificate and key: {e}", cert.display(), key.display())
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err("tls.cert_file and tls.key_file go together".into()),
        }
        Ok(builder)
    }
}

/// Check user headers: valid names and values, none reserved.
pub fn extra_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(format!("{name:?} is set by lsvmi itself and cannot be overridden"));
        }
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a valid header name"))?;
        let v =
            HeaderValue::from_str(value).map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
        out.push((n, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn reserved_headers_cannot_be_set() {
        for name in
            ["Content-Type", "content-encoding", "User-Agent", "Authorization", "X-Prometheus-Remote-Write-Version"]
        {
            let h = BTreeMap::from([(name.to_string(), "x".to_string())]);
            assert!(extra_headers(&h).unwrap_err().contains("cannot be overridden"), "{name}");
        }
        let ok = BTreeMap::from([("X-Scope-OrgID".to_string(), "tenant-7".to_string())]);
        assert_eq!(extra_headers(&ok).unwrap().len(), 1);
        assert!(extra_headers(&BTreeMap::from([("bad name".to_string(), "x".to_string())])).is_err());
    }

    #[test]
    fn credentials_from_files_are_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let v = Credentials::Bearer { token_file: token.clone() }.header().unwrap().unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer s3cret");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cret"), "Debug shows the secret");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pa55\n").unwrap();
        let v = Credentials::Basic { username: "u".into(), password_file: pw }.header().unwrap().unwrap();
        assert_eq!(v.to_str().unwrap(), "Basic dTpwYTU1");
        std::fs::write(&token, "").unwrap();
        assert!(Credentials::Bearer { token_file: token }.header().unwrap_err().contains("empty"));
    }
}
