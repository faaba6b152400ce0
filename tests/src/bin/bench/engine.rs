//! The engine's micro-benchmarks (`cargo bench -p liqonet-benches`) as criterion last saved
//! them, printed beside the end-to-end table so a slower data path shows in the same report.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

/// Criterion's results: `criterion/` in the target directory the bench binary was built in.
fn criterion_dir() -> PathBuf {
    liqonet_lab::lab::bin_dir()
        .ok()
        .and_then(|d| d.parent().map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

struct Figure {
    id: String,
    /// Median time per iteration, in ns.
    median_ns: f64,
    bytes: f64,
    measured: Option<SystemTime>,
}

/// Every benchmark with a byte throughput (the per-packet and per-64 KB ones), by id.
fn figures(dir: &Path) -> Vec<Figure> {
    let mut out = Vec::new();
    let subdirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|it| it.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    for group in subdirs(dir) {
        for bench in subdirs(&group) {
            if let Some(f) = figure(&bench.join("new")) {
                out.push(f);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn figure(new: &Path) -> Option<Figure> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(new.join(name)).ok()?).ok()
    };
    let bench = read("benchmark.json")?;
    let estimates = read("estimates.json")?;
    Some(Figure {
        id: bench["full_id"].as_str()?.to_string(),
        median_ns: estimates["median"]["point_estimate"].as_f64()?,
        bytes: bench["throughput"]["Bytes"].as_f64()?,
        measured: std::fs::metadata(new.join("estimates.json"))
            .and_then(|m| m.modified())
            .ok(),
    })
}

pub fn print() {
    let dir = criterion_dir();
    let figures = figures(&dir);
    if figures.is_empty() {
        println!(
            "\nengine: no criterion results in {} (cargo bench -p liqonet-benches)",
            dir.display()
        );
        return;
    }
    let oldest = figures
        .iter()
        .filter_map(|f| f.measured?.elapsed().ok())
        .max()
        .map_or(String::new(), |age| {
            format!(", the oldest {} min old", age.as_secs() / 60)
        });
    println!("\nengine alone (cargo bench -p liqonet-benches, 1420-byte packets; median{oldest}):");
    let w = figures.iter().map(|f| f.id.len()).max().unwrap_or(0);
    for f in &figures {
        println!(
            "  {:w$}  {:>9.3} µs  {:>6.2} Gbit/s",
            f.id,
            f.median_ns / 1e3,
            f.bytes * 8.0 / f.median_ns.max(1e-9)
        );
    }
}
