//! Signals as readable sockets for the agent loop's poll: SIGTERM and SIGINT stop it; SIGHUP
//! makes it reload its configuration and reconcile at once (never ends it, as SIGHUP's default
//! action would).

use std::io::Read;
use std::os::unix::net::UnixStream;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

pub struct Signals {
    pub stop: UnixStream,
    pub reload: UnixStream,
}

impl Signals {
    pub fn register() -> anyhow::Result<Signals> {
        let (stop, stop_tx) = UnixStream::pair()?;
        let (reload, reload_tx) = UnixStream::pair()?;
        for sig in [SIGINT, SIGTERM] {
            signal_hook::low_level::pipe::register(sig, stop_tx.try_clone()?)?;
        }
        signal_hook::low_level::pipe::register(SIGHUP, reload_tx)?;
        // Drained without blocking: several SIGHUPs in a row are one reload.
        reload.set_nonblocking(true)?;
        Ok(Signals { stop, reload })
    }
}

/// What a non-blocking socket had waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    Bytes,
    Nothing,
    /// The other end is gone.
    Closed,
}

/// Reads every byte waiting on a non-blocking socket.
pub fn drain(s: &UnixStream) -> Drained {
    let mut got = Drained::Nothing;
    let mut buf = [0u8; 64];
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) if got == Drained::Nothing => return Drained::Closed,
            Ok(0) => return got,
            Ok(_) => got = Drained::Bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // WouldBlock: all read.
            Err(_) => return got,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn drain_tells_bytes_from_nothing_from_a_closed_end() {
        let (rx, tx) = UnixStream::pair().expect("a socket pair");
        rx.set_nonblocking(true).expect("non-blocking");
        assert_eq!(drain(&rx), Drained::Nothing);
        (&tx).write_all(&[1; 200]).expect("write");
        assert_eq!(drain(&rx), Drained::Bytes);
        assert_eq!(drain(&rx), Drained::Nothing);
        drop(tx);
        assert_eq!(drain(&rx), Drained::Closed);
    }
}
