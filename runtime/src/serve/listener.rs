//! Sockets and connections: binding (a Unix socket 0660, group from the
//! config), accepting, and admitting at most `max_connections` at once.

use std::convert::Infallible;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::{MAX_SHEDDING, READ_BUFFER, SHED_HEADER_TIMEOUT};
use super::{api, Listen, State};

/// Who may connect to a Unix socket: its owner and its group.
const SOCKET_MODE: u32 = 0o660;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `listen`; a Unix socket gets [`SOCKET_MODE`] and, if given, `group`
    /// (a name from /etc/group or a number).
    pub async fn bind(listen: &Listen, group: Option<&str>) -> io::Result<Listener> {
        match listen {
            Listen::Tcp { host, port } => Ok(Listener::Tcp(
                TcpListener::bind((host.as_str(), *port)).await?,
            )),
            Listen::Unix(path) => {
                let gid = group.map(group_id).transpose()?;
                bind_unix(path, gid).map(Listener::Unix)
            }
        }
    }
}

/// Binds a socket in a private directory beside `path`, sets its mode and
/// group, then renames it to `path`: no client can connect before its
/// permissions are set, whatever the umask. A socket left by a previous run
/// is replaced; anything else at `path` is not ours to replace.
fn bind_unix(path: &Path, gid: Option<u32>) -> io::Result<UnixListener> {
    if fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        ));
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no socket file name"))?;
    let staging = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let socket = staging.join("socket");
        let listener = UnixListener::bind(&socket)?;
        fs::set_permissions(&socket, Permissions::from_mode(SOCKET_MODE))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&socket, None, Some(gid))
                .map_err(|e| io::Error::new(e.kind(), format!("giving it group {gid}: {e}")))?;
        }
        fs::rename(&socket, path)?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&staging);
    bound
}

/// A group's id: `group` itself if it is a number, else its /etc/group entry.
fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    fs::read_to_string("/etc/group")?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group `{group}` in /etc/group (give its number instead)"),
            )
        })
}

/// Accepts connections forever, one task each: `max_connections` served,
/// up to [`MAX_SHEDDING`] more answered 503, any beyond closed at once.
pub async fn accept(listener: Listener, state: Arc<State>) -> Result<()> {
    let open = Arc::new(Semaphore::new(state.limits.max_connections.get()));
    let shedding = Arc::new(Semaphore::new(MAX_SHEDDING));
    loop {
        let admit = || {
            if let Ok(permit) = Arc::clone(&open).try_acquire_owned() {
                Some((permit, true))
            } else {
                Some((Arc::clone(&shedding).try_acquire_owned().ok()?, false))
            }
        };
        let accepted = match &listener {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| admit().map(|a| connection(s, &state, a, false))),
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| admit().map(|a| connection(s, &state, a, false))),
        };
        if let Err(e) = accepted {
            // Out of file descriptors, typically: wait for some to close.
            log::error!("accepting a connection: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves one connection, holding `permit` until it closes; not `admitted`,
/// every request on it is answered 503. `half_close`: still answer a client
/// that closed its sending side after its request (the loopback's does; on
/// a socket hyper's default stays, closing at once).
pub(super) fn connection<S>(
    stream: S,
    state: &Arc<State>,
    (permit, admitted): (OwnedSemaphorePermit, bool),
    half_close: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::clone(state);
    let header_timeout = if admitted {
        state.limits.header_timeout
    } else {
        SHED_HEADER_TIMEOUT
    };
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move {
                Ok::<_, Infallible>(if admitted {
                    api::handle(&state, req).await
                } else {
                    api::shed(&state, &req)
                })
            }
        });
        // A connection's errors (resets, timeouts) end that connection only.
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(READ_BUFFER)
            .half_close(half_close)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_numbers_or_names_from_etc_group() {
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
        let err = group_id("no-such-group-here").unwrap_err();
        assert!(
            err.to_string().contains("no group `no-such-group-here`"),
            "{err}"
        );
    }
}
