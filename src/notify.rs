//! The systemd notify protocol: `READY=1`, `STOPPING=1`, `WATCHDOG=1` and `STATUS=` datagrams to
//! `$NOTIFY_SOCKET`. It is one datagram per message, so it lives here rather than in a crate.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or `Type=` other than notify) every call is a
//! no-op. The socket is opened once; sending never blocks, and a failed send is logged the first
//! time only (the watchdog would otherwise repeat it every few seconds).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The open socket and the manager's address.
#[derive(Debug)]
struct Target {
    name: String,
    socket: UnixDatagram,
    addr: SocketAddr,
    warned: AtomicBool,
}

/// A handle to the service manager's notification socket; clones share the socket.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ours = var("WATCHDOG_PID").is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier::to(var("NOTIFY_SOCKET").as_deref(), watchdog)
    }

    /// A notifier for `socket` (a path, or `@name` in the abstract namespace).
    fn to(socket: Option<&str>, watchdog: Option<Duration>) -> Notifier {
        let target = socket.and_then(|name| match open(name) {
            Ok((socket, addr)) => {
                Some(Arc::new(Target { name: name.to_string(), socket, addr, warned: AtomicBool::new(false) }))
            }
            Err(e) => {
                log::warn!("systemd notify socket {name}: {e}; notifications are off");
                None
            }
        });
        Notifier { target, watchdog }
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog).map(|w| w / 2)
    }

    /// Sends one message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.socket.send_to_addr(message.as_bytes(), &t.addr) {
            if !t.warned.swap(true, Ordering::Relaxed) {
                log::warn!("systemd notify to {}: {e}", t.name);
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

fn open(target: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(target)?,
    };
    Ok((socket, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str(), Some(Duration::from_secs(4)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        n.ready("ok");
        n.watchdog();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got, ["READY=1\nSTATUS=ok", "WATCHDOG=1", "STOPPING=1\nSTATUS=draining"]);
    }

    #[test]
    fn abstract_sockets_work_and_absence_is_silent() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("signalgate-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::to(Some(&format!("@{name}")), None).send("READY=1");
        let mut buf = [0u8; 16];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let off = Notifier::to(None, Some(Duration::from_secs(4)));
        assert_eq!(off.watchdog_interval(), None, "no socket, no watchdog");
        off.ready("nothing happens");
        // A socket that is gone is logged once, not fatal.
        let gone = Notifier::to(Some("/nonexistent/notify.sock"), None);
        gone.send("READY=1");
        gone.send("WATCHDOG=1");
        assert!(gone.target.as_ref().unwrap().warned.load(Ordering::Relaxed));
    }
}
