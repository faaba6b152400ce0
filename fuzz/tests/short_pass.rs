//! Every target for a few thousand inputs, so `cargo test` runs the fuzzers too (a fixed seed:
//! the same inputs each time; `make fuzz` explores).

use std::time::Duration;

use liqonet_fuzz::driver::{self, Options};
use liqonet_fuzz::targets;

#[test]
fn every_target_survives_a_short_pass() {
    let crash_dir = std::env::temp_dir().join(format!("liqonet-fuzz-test-{}", std::process::id()));
    let mut failed = Vec::new();
    for name in targets::ALL {
        let inputs = if targets::SLOW.contains(&name) {
            300
        } else {
            3000
        };
        let opts = Options {
            inputs,
            seed: 0x11_90_2e_7f,
            time_limit: Some(Duration::from_secs(20)),
            crash_dir: crash_dir.clone(),
            progress: None,
            allow_known: true,
        };
        let mut target = targets::make(name).expect("a listed target");
        let r = driver::run(name, target.as_mut(), &opts);
        println!(
            "{name}: {} inputs, {:.0}/s, {} crashes, {} known findings\n  {}",
            r.inputs,
            r.per_second(),
            r.crashes,
            r.known,
            r.coverage.replace('\n', "\n  ")
        );
        if r.crashes > 0 {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "crashes in {failed:?} (inputs saved in {})",
        crash_dir.display()
    );
    let _ = std::fs::remove_dir_all(&crash_dir);
}
