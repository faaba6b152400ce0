//! `genkey` / `pubkey` agree with WireGuard's own `wg` (wireguard-tools).

use std::io::Write;
use std::process::{Command, Stdio};

fn pipe(cmd: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (make deps installs it): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const GATEWAY: &str = env!("CARGO_BIN_EXE_liqonet-gateway");

#[test]
fn public_keys_match_wg() {
    for _ in 0..5 {
        let ours = pipe(GATEWAY, &["genkey"], "");
        assert_eq!(ours.len(), 44);
        assert_eq!(
            pipe(GATEWAY, &["pubkey"], &ours),
            pipe("wg", &["pubkey"], &ours)
        );
        let theirs = pipe("wg", &["genkey"], "");
        assert_eq!(
            pipe(GATEWAY, &["pubkey"], &theirs),
            pipe("wg", &["pubkey"], &theirs)
        );
    }
}

#[test]
fn pubkey_refuses_garbage() {
    let mut child = Command::new(GATEWAY)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not a key\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold a private key"));
}
