//! The TUN device: present, up, with the configured MTU. Read from `/sys/class/net/<name>/`
//! (`ip netns exec` mounts the namespace's own).

use std::path::Path;

use super::Check;

/// What sysfs says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub flags: u32,
    pub mtu: u32,
    pub operstate: String,
}

/// `IFF_UP`: the administrative state (`ip link set up`).
const IFF_UP: u32 = 0x1;

/// Device `name` under `class_net` (`/sys/class/net`); `None` when it does not exist.
pub fn read(class_net: &Path, name: &str) -> Result<Option<Link>, String> {
    let dir = class_net.join(name);
    if !dir.exists() {
        return Ok(None);
    }
    let file = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", dir.join(f).display()))
    };
    let flags = file("flags")?;
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{}/flags holds {flags:?}, not hex flags", dir.display()))?;
    let mtu = file("mtu")?;
    let mtu = mtu
        .parse()
        .map_err(|_| format!("{}/mtu holds {mtu:?}, not a number", dir.display()))?;
    Ok(Some(Link {
        flags,
        mtu,
        operstate: file("operstate")?,
    }))
}

/// The `tun` and `tun-mtu` lines for device `name`, which should have MTU `mtu`; `start` is
/// how to start the gateway (for a missing device).
pub fn checks(link: Result<Option<Link>, String>, name: &str, mtu: u16, start: &str) -> Vec<Check> {
    let link = match link {
        Ok(Some(l)) => l,
        Ok(None) => {
            return vec![Check::fail(
                "tun",
                name,
                "no such device: the gateway is not running on this node",
                start,
            )]
        }
        Err(e) => return vec![Check::warn("tun", name, &e)],
    };
    let mut out = Vec::new();
    let state = format!("flags {:#x}, operstate {}", link.flags, link.operstate);
    out.push(if link.flags & IFF_UP == 0 {
        Check::fail(
            "tun",
            name,
            &format!("down ({state}): nothing goes through the tunnel"),
            &format!("ip link set dev {name} up"),
        )
    } else if matches!(link.operstate.as_str(), "down" | "lowerlayerdown") {
        // A TUN device has a carrier while a process holds it open.
        Check::fail(
            "tun",
            name,
            &format!("up but without carrier ({state}): no process holds the device"),
            start,
        )
    } else {
        Check::pass("tun", name, &format!("up ({state})"))
    });
    out.push(if link.mtu == u32::from(mtu) {
        Check::pass("tun-mtu", name, &format!("MTU {}", link.mtu))
    } else {
        Check::fail(
            "tun-mtu",
            name,
            &format!(
                "MTU {}, not the configured {mtu}: packets the peer sends at full size do not fit",
                link.mtu
            ),
            &format!("ip link set dev {name} mtu {mtu}"),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Status;

    #[test]
    fn sysfs_is_read_and_judged() {
        let dir =
            std::env::temp_dir().join(format!("liqonet-diagnose-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dev = dir.join("liqo0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("flags"), "0x1091\n").unwrap();
        std::fs::write(dev.join("mtu"), "1420\n").unwrap();
        std::fs::write(dev.join("operstate"), "unknown\n").unwrap();
        let link = read(&dir, "liqo0");
        assert_eq!(
            link,
            Ok(Some(Link {
                flags: 0x1091,
                mtu: 1420,
                operstate: "unknown".into()
            }))
        );
        let c = checks(link.clone(), "liqo0", 1420, "start it");
        assert!(c.iter().all(|c| c.status == Status::Pass), "{c:?}");
        let c = checks(link, "liqo0", 1380, "start it");
        assert_eq!(c[1].status, Status::Fail);
        assert_eq!(c[1].fix.as_deref(), Some("ip link set dev liqo0 mtu 1380"));

        std::fs::write(dev.join("flags"), "0x1090\n").unwrap();
        let c = checks(read(&dir, "liqo0"), "liqo0", 1420, "start it");
        assert_eq!(c[0].status, Status::Fail);
        assert_eq!(c[0].fix.as_deref(), Some("ip link set dev liqo0 up"));

        let c = checks(read(&dir, "liqo1"), "liqo1", 1420, "start it");
        assert_eq!((c.len(), c[0].status), (1, Status::Fail));
        std::fs::write(dev.join("mtu"), "lots\n").unwrap();
        assert!(read(&dir, "liqo0").unwrap_err().contains("not a number"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
