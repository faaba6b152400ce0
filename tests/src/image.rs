//! Container images built offline, with no registry and no base image: an OCI image layout in
//! one tar archive (`oci-layout`, `index.json`, `blobs/sha256/…`), one uncompressed layer, named by
//! the `io.containerd.image.name` annotation so that `ctr images import` tags it as deploy/ names
//! it.
//!
//! Two images are made here: the project's (its two binaries and the shared libraries they link,
//! nothing else: the Dockerfile's distroless contents) and the test pods' (Debian's static
//! busybox with its applets, curl and iperf3 with their libraries).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The image deploy/ runs, without its tag: `REPOSITORY:<crate version>`.
pub const REPOSITORY: &str = "ghcr.io/liqonet/liqonet";
/// The test pods' image, named as deploy/'s with `-test` appended.
pub const TEST_REPOSITORY: &str = "ghcr.io/liqonet/liqonet-test";

/// What goes at one path of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file with the contents of a host file, and a mode.
    File {
        source: PathBuf,
        mode: u32,
    },
    Symlink(String),
    Dir {
        mode: u32,
    },
}

/// An image's name, root filesystem (absolute paths in the image, without the leading `/`) and
/// runtime settings.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub entries: BTreeMap<String, Entry>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
}

impl Image {
    pub fn new(name: &str) -> Self {
        Image {
            name: name.to_string(),
            entries: BTreeMap::new(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            cmd: Vec::new(),
        }
    }

    /// `source` at `path` (absolute, in the image), with its parent directories.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) {
        self.parents(path);
        self.entries.insert(
            rel(path),
            Entry::File {
                source: source.to_path_buf(),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries
            .insert(rel(path), Entry::Symlink(target.to_string()));
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.parents(path);
        self.entries.insert(rel(path), Entry::Dir { mode });
    }

    /// An executable at `path`, and every shared library it links (as `ldd` finds them) at the
    /// path the dynamic loader looks for it.
    pub fn executable(&mut self, path: &str, source: &Path) -> anyhow::Result<()> {
        self.file(path, source, 0o755);
        for lib in shared_libraries(source)? {
            let real = fs::canonicalize(&lib).with_context(|| format!("{}", lib.display()))?;
            self.file(&lib.to_string_lossy(), &real, 0o755);
        }
        Ok(())
    }

    fn parents(&mut self, path: &str) {
        let mut dir = Path::new(&rel(path)).parent().map(Path::to_path_buf);
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(d.to_string_lossy().into_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            dir = d.parent().map(Path::to_path_buf);
        }
    }

    /// Writes the image as an OCI layout archive at `out`; returns the manifest's digest.
    pub fn write(&self, out: &Path) -> anyhow::Result<String> {
        let layer = self.layer()?;
        let layer_digest = sha256(&layer);
        let (_, tag) = self
            .name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .with_context(|| format!("image name {:?} has no tag", self.name))?;
        let config = serde_json::to_vec(&json!({
            "architecture": go_arch()?,
            "os": "linux",
            "config": { "Env": self.env, "Cmd": self.cmd },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created_by": "liqonet-lab image (offline, no base image)" }],
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = sha256(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
                "platform": { "architecture": go_arch()?, "os": "linux" },
            }],
        }))?;
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = out.with_extension("tmp");
        let mut archive = tar::Builder::new(fs::File::create(&tmp)?);
        let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            archive.append_data(&mut h, path, data)?;
            Ok(())
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for blob in [&layer, &config, &manifest] {
            add(&format!("blobs/sha256/{}", hex(blob)), blob)?;
        }
        add("index.json", &index)?;
        archive.into_inner()?.flush()?;
        fs::rename(&tmp, out)?;
        Ok(manifest_digest)
    }

    /// The root filesystem as one tar layer: entries in path order, owned by root, time 0.
    fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut layer = tar::Builder::new(Vec::new());
        layer.follow_symlinks(false);
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match entry {
                Entry::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    layer.append_data(&mut h, format!("{path}/"), &[][..])?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    layer.append_link(&mut h, path, target)?;
                }
                Entry::File { source, mode } => {
                    let data = fs::read(source).with_context(|| format!("{}", source.display()))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    layer.append_data(&mut h, path, &data[..])?;
                }
            }
        }
        Ok(layer.into_inner()?)
    }
}

/// The project's image: `liqonet-gateway` and `liqonet-route-agent` from `bin_dir` in
/// /usr/local/bin, as the Dockerfile puts them, with the libraries they link.
pub fn project_image(bin_dir: &Path) -> anyhow::Result<Image> {
    let mut image = Image::new(&format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
    for bin in ["liqonet-gateway", "liqonet-route-agent"] {
        image.executable(&format!("/usr/local/bin/{bin}"), &bin_dir.join(bin))?;
    }
    Ok(image)
}

/// The test pods' image: busybox (Debian's static build) with a link for each of its applets in
/// /bin (sh, ping, httpd, nc, sleep, …), curl and iperf3 with their libraries, and /tmp.
pub fn test_image() -> anyhow::Result<Image> {
    let mut image = Image::new(&format!("{TEST_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing (Debian's busybox-static; scripts/deps.sh installs it)");
    }
    image.file("/bin/busybox", busybox, 0o755);
    let out = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if applet != "busybox" {
            image.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    for tool in ["curl", "iperf3"] {
        let path = which(tool)?;
        image.executable(&format!("/usr/bin/{tool}"), &path)?;
    }
    image.dir("/tmp", 0o1777);
    image.cmd = vec!["sleep".into(), "infinity".into()];
    Ok(image)
}

/// The pod sandbox's image: the pause binary `scripts/controlplane.sh` compiled (static), named
/// as containerd's sandbox setting names it (`registry.k8s.io/pause:<tag>`).
pub fn pause_image(controlplane_bin: &Path) -> anyhow::Result<Image> {
    let dir = controlplane_bin.join("pause");
    let tag = fs::read_to_string(dir.join("tag"))
        .with_context(|| format!("{}: run scripts/controlplane.sh", dir.display()))?;
    let mut image = Image::new(&format!("registry.k8s.io/pause:{}", tag.trim()));
    image.file("/pause", &dir.join("pause"), 0o755);
    image.cmd = vec!["/pause".into()];
    Ok(image)
}

/// The libraries `ldd` lists for `binary`, the dynamic loader included (none for a static one).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || out.stderr.is_empty() {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("{}: {line}", binary.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let out = crate::netns::run(&["sh", "-c", &format!("command -v {tool}")]).unwrap_or_default();
    if out.trim().is_empty() {
        bail!("{tool} is not installed (scripts/deps.sh installs it)");
    }
    Ok(PathBuf::from(out.trim()))
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
}

/// The architecture as OCI (Go) names it.
fn go_arch() -> anyhow::Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no OCI name known for architecture {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is what the OCI layout spec asks for: every descriptor names a blob of that
    /// digest and size, the layer holds the files with their modes, links and parent directories.
    #[test]
    fn an_image_archive_is_a_consistent_oci_layout() {
        let dir = std::env::temp_dir().join(format!("liqonet-image-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("hello");
        fs::write(&src, b"#!/bin/sh\necho hello\n").unwrap();
        let mut image = Image::new("example.org/a/b:1.2.3");
        image.file("/usr/local/bin/hello", &src, 0o755);
        image.symlink("/bin/hi", "/usr/local/bin/hello");
        image.dir("/tmp", 0o1777);
        let out = dir.join("image.tar");
        let digest = image.write(&out).unwrap();

        let mut blobs = BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            blobs.insert(path, data);
        }
        let blob = |d: &str| &blobs[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))];
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], digest);
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "example.org/a/b:1.2.3"
        );
        let manifest_bytes = blob(&digest);
        assert_eq!(m["size"], manifest_bytes.len());
        assert_eq!(sha256(manifest_bytes), digest);
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
        for d in [&manifest["config"], &manifest["layers"][0]] {
            let b = blob(d["digest"].as_str().unwrap());
            assert_eq!(sha256(b), d["digest"]);
            assert_eq!(d["size"], b.len());
        }
        let config: serde_json::Value =
            serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );

        let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
        let mut seen = Vec::new();
        for e in tar::Archive::new(&layer[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                h.mode().unwrap(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            ));
        }
        use tar::EntryType::*;
        assert_eq!(
            seen,
            vec![
                ("bin/".into(), Directory, 0o755, None),
                (
                    "bin/hi".into(),
                    Symlink,
                    0o777,
                    Some("/usr/local/bin/hello".into())
                ),
                ("tmp/".into(), Directory, 0o1777, None),
                ("usr/".into(), Directory, 0o755, None),
                ("usr/local/".into(), Directory, 0o755, None),
                ("usr/local/bin/".into(), Directory, 0o755, None),
                ("usr/local/bin/hello".into(), Regular, 0o755, None),
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_project_image_holds_the_binaries_and_what_they_link() {
        // Built beside this test by `cargo test` of the workspace, as the lab needs them.
        let bin_dir = crate::lab::bin_dir().unwrap();
        assert!(
            bin_dir.join("liqonet-gateway").exists(),
            "build the binaries first (cargo build --bins)"
        );
        let image = project_image(&bin_dir).unwrap();
        let paths: Vec<&str> = image.entries.keys().map(String::as_str).collect();
        assert!(
            paths.contains(&"usr/local/bin/liqonet-gateway"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"usr/local/bin/liqonet-route-agent"),
            "{paths:?}"
        );
        assert!(
            paths.iter().any(|p| p.ends_with("libc.so.6")),
            "glibc: {paths:?}"
        );
        // Nothing else: no shell, no tools.
        let files = image
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File { .. }))
            .count();
        assert!(files <= 6, "{paths:?}");
        assert!(!paths.iter().any(|p| p.ends_with("/sh")), "{paths:?}");
    }
}
