//! The control socket: one JSON request line, one JSON answer line, per connection.
//!
//! The socket is a file under `/run/lsvmi/` by default, mode 0600 in a 0700 directory,
//! and each caller's credentials are checked on top (SO_PEERCRED): root or the daemon's
//! own user. A session loads programs into the kernel, so nobody else may start one.

use std::{
    io::{BufRead as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use super::{Request, Response, SessionInfo, Sessions, Then};

/// The longest request accepted (a start with every filter is ~200 bytes).
const MAX_REQUEST: usize = 4096;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another lsvmi daemon answers there")]
    InUse { path: String },
}

/// Bind the socket: its directory created 0700 if missing, a stale socket file (no one
/// answers) replaced, a live one refused.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse { path: path.display().to_string() });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Answer requests until `stop`; the socket file is removed on the way out.
pub async fn serve(listener: UnixListener, sessions: Sessions, mut stop: watch::Receiver<bool>) {
    let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let sessions = sessions.clone();
        tokio::spawn(async move {
            // A caller that says nothing is not allowed to hold a task for long.
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &sessions, own_uid)).await;
        });
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

async fn answer(stream: UnixStream, sessions: &Sessions, own_uid: u32) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let response = if uid != Some(0) && uid != Some(own_uid) {
        tracing::warn!(uid = ?uid, "control socket: refused a caller that is neither root nor the daemon's user");
        Response::Error { message: "not permitted: only root or the daemon's own user may control tracing".into() }
    } else {
        match reader.read_line(&mut line).await {
            Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
                Ok(Request::Dump) => dump(sessions).await,
                Ok(req) => {
                    let (response, then) = sessions.handle(req, crate::model::now_ms());
                    follow_up(sessions, response, then).await
                }
                Err(e) => Response::Error { message: format!("bad request: {e}") },
            },
            Err(e) => Response::Error { message: format!("reading the request: {e}") },
        }
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// `lsvmi trace dump`: the hindsight ring into `<trace.dir>/dump-<ms>.trace.json`, on the
/// blocking pool.
async fn dump(sessions: &Sessions) -> Response {
    let dir = sessions.settings().dir.clone();
    let done = tokio::task::spawn_blocking(move || {
        let kept = super::hindsight::dump()?;
        let id = format!("dump-{}", crate::model::now_ms());
        let path = super::timeline::write(&dir, &id, &super::hindsight::files(&id, &kept))
            .map_err(|e| format!("writing to {}: {e}", dir.display()))?;
        tracing::info!(records = kept.len(), "hindsight ring dumped to {}", path.display());
        Ok::<_, String>(Response::Dumped { path: path.display().to_string(), records: kept.len() })
    })
    .await;
    match done {
        Ok(Ok(r)) => r,
        Ok(Err(message)) => Response::Error { message },
        Err(e) => Response::Error { message: format!("dump failed: {e}") },
    }
}

/// Load or unload programs as a request left to do, on the blocking pool (BTF parsing
/// and the verifier take long enough to delay a tick). A session whose programs cannot
/// start is ended at once and the caller told why.
pub(crate) async fn follow_up(sessions: &Sessions, mut response: Response, then: Vec<Then>) -> Response {
    for step in then {
        match step {
            Then::Start(session) => {
                let tracer = sessions.tracer();
                let s = session.clone();
                let started = tokio::task::spawn_blocking(move || tracer.and_then(|t| t.start(&s)))
                    .await
                    .unwrap_or_else(|e| Err(format!("starting the session failed: {e}")));
                match started {
                    Ok(()) => {
                        tokio::spawn(super::budget::govern(sessions.clone(), session));
                    }
                    Err(e) => {
                        sessions.end(&format!("failed: {e}"));
                        response = Response::Error { message: format!("session {} could not start: {e}", session.id) };
                    }
                }
            }
            Then::Stop(session) => stop_programs(sessions, session).await,
        }
    }
    response
}

/// Detach a session's programs (on the blocking pool).
pub async fn stop_programs(sessions: &Sessions, session: SessionInfo) {
    if let Ok(tracer) = sessions.tracer() {
        let _ = tokio::task::spawn_blocking(move || tracer.stop(&session)).await;
    }
}

/// The client side (`lsvmi trace …`): send one request, read one answer.
pub fn call(path: &Path, req: &Request) -> Result<Response, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("no lsvmi daemon answers on {} (is it running? --control-socket names another)", path.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("{}: permission denied (only root or the daemon's user may control tracing)", path.display())
        }
        _ => format!("{}: {e}", path.display()),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    // The daemon may answer (a refusal) before reading the request, and close: the
    // answer is still there to read when the write fails.
    let written = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = std::io::BufReader::new(stream).read_line(&mut answer);
    match (read, written) {
        (Ok(n), _) if n > 0 => {}
        (_, Err(e)) | (Err(e), _) => return Err(format!("{}: {e}", path.display())),
        (Ok(_), Ok(())) => return Err(format!("{}: the daemon closed without an answer", path.display())),
    }
    serde_json::from_str(answer.trim()).map_err(|e| format!("the daemon's answer is not understood ({e}): {answer:?}"))
}
