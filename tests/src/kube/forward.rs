//! A loopback forwarder into the lab: a listener on 127.0.0.1 in the host's namespace whose
//! connections are relayed to an address inside a lab namespace, so a kubeconfig printed by
//! the lab works from the host's shell without touching the host's network configuration.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// Listens on 127.0.0.1:`port` (0: any free port) and relays to `target` inside `ns`. Returns
/// the port; the forwarder lives as long as the process.
pub fn spawn(port: u16, ns: &str, target: SocketAddr) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    let path = format!("/run/netns/{ns}");
    thread::Builder::new()
        .name("lab-forward".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let path = path.clone();
                let _ = thread::Builder::new().spawn(move || relay(conn, &path, target));
            }
        })?;
    Ok(port)
}

fn relay(client: TcpStream, netns_path: &str, target: SocketAddr) {
    // setns affects this thread only: the connection is made from inside the lab namespace.
    let Ok(netns) = std::fs::File::open(netns_path) else {
        return;
    };
    if nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
