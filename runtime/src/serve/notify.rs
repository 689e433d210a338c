//! systemd's readiness protocol (`Type=notify`): one datagram to the socket
//! named by `$NOTIFY_SOCKET`, nothing when the variable is unset.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Tells systemd start-up is over: the selection is made and requests are answered.
pub fn ready(subnet: &str) {
    send(&format!("READY=1\nSTATUS=serving {subnet}\n"));
}

/// Updates the status line `systemctl status` shows.
pub fn status(subnet: &str) {
    send(&format!("STATUS=serving {subnet}\n"));
}

/// A lost notification is logged, not fatal: systemd's start timeout is the
/// judge of readiness, and a service run by hand has no socket at all.
fn send(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy();
    if let Err(e) = send_to(&socket, message) {
        log::warn!("cannot notify systemd at {socket}: {e}");
    }
}

fn send_to(socket: &str, message: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        // An abstract socket: '@' stands for the leading NUL byte.
        Some(name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(message.as_bytes(), &addr)?;
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist only on Linux",
                ));
            }
        }
        None => {
            datagram.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}
