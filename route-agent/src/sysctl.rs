//! Sysctls under `/proc/sys`, or under `LIQONET_PROC_SYS` where a container sees the host's
//! (containers get a read-only `/proc/sys`; the DaemonSet mounts the host's elsewhere).

fn path(key: &str) -> String {
    let root = std::env::var("LIQONET_PROC_SYS").unwrap_or_else(|_| "/proc/sys".into());
    format!("{root}/{key}")
}

/// The value of `key` (`net/ipv4/ip_forward`), trimmed.
pub fn read(key: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

pub fn write(key: &str, value: &str) -> anyhow::Result<()> {
    Ok(std::fs::write(path(key), value)?)
}
