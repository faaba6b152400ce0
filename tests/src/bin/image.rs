//! `liqonet-image`: builds the project's image and the test pods' image offline (no registry, no
//! base image) as OCI layout archives that `ctr images import` takes.
//!
//! `liqonet-image [--bin-dir DIR] [--out DIR]`: the binaries from DIR (default: beside this
//! program, so a release build packs release binaries), the archives into `--out` (default
//! `target/image`). Prints each image's name, archive and manifest digest.

use anyhow::Context;
use liqonet_lab::image;

fn main() -> anyhow::Result<()> {
    let mut bin_dir = liqonet_lab::lab::bin_dir()?;
    let mut out = bin_dir.join("../image");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin-dir" => bin_dir = args.next().context("--bin-dir needs a directory")?.into(),
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("liqonet-image [--bin-dir DIR] [--out DIR]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (liqonet-image --help)"),
        }
    }
    for (file, img) in [
        ("liqonet.tar", image::project_image(&bin_dir)?),
        ("liqonet-test.tar", image::test_image()?),
    ] {
        let path = out.join(file);
        let digest = img.write(&path)?;
        println!("{}  {}  {digest}", img.name, path.display());
    }
    Ok(())
}
