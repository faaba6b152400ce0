//! Every saved reproducer in `fuzz/reproducers/` (named `<target>-<what>.<ext>`) runs clean: the
//! bugs they found stay fixed. A failed check marked as a known finding (reported, not fixed
//! yet) is allowed; any other failure or panic is not.

use liqonet_fuzz::driver::{self, KNOWN};
use liqonet_fuzz::targets;

#[test]
fn saved_reproducers_run_clean() {
    driver::install_panic_hook();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reproducers");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/reproducers") {
        let path = entry.expect("a directory entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(name) = targets::ALL
            .iter()
            .find(|t| file.starts_with(&format!("{t}-")))
        else {
            continue;
        };
        let input = std::fs::read(&path).expect("a reproducer");
        let mut target = targets::make(name).expect("a listed target");
        if let Err(why) = driver::run_one(target.as_mut(), &input) {
            assert!(why.contains(KNOWN), "{file}: {why}");
            println!("{file}: {why}");
        }
        ran += 1;
    }
    assert!(ran > 0, "no reproducer in {}", dir.display());
}
