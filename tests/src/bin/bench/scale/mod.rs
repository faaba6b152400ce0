//! `liqonet-bench scale [PART...]`: what one gateway and its route agents sustain as peers,
//! networks and nodes grow (issue targets beside each figure). Parts: `engine` (per-packet cost,
//! memory and timer CPU per peer, a gateway with 100 peers in the lab), `agent` (1 000 remote
//! networks on a node), `kube` (50 nodes on one API server); all of them when none is named.

mod agent;
mod engine;
mod kube;

/// One measured figure against its target.
pub struct Figure {
    pub what: String,
    pub value: String,
    pub target: String,
    pub met: bool,
}

impl Figure {
    pub fn new(what: &str, value: String, target: &str, met: bool) -> Figure {
        Figure {
            what: what.into(),
            value,
            target: target.into(),
            met,
        }
    }
}

type Part = fn() -> anyhow::Result<Vec<Figure>>;

const PARTS: &[(&str, Part)] = &[
    ("engine", engine::run),
    ("agent", agent::run),
    ("kube", kube::run),
];

pub fn run(names: &[String]) -> anyhow::Result<()> {
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !PARTS.iter().any(|(p, _)| p == n))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = PARTS.iter().map(|(p, _)| *p).collect();
        anyhow::bail!("unknown part {unknown:?} (parts: {})", known.join(", "));
    }
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for (name, part) in PARTS {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        println!("== scale: {name}");
        match part() {
            Ok(figures) => {
                for f in &figures {
                    print_figure(f);
                }
                all.extend(figures);
            }
            // One part failing (say, the control plane did not build) leaves the others.
            Err(e) => {
                println!("{name}: failed: {e:#}");
                failed.push(*name);
            }
        }
    }
    println!("== scale: summary");
    for f in &all {
        print_figure(f);
    }
    if !failed.is_empty() {
        anyhow::bail!("parts that failed: {}", failed.join(", "));
    }
    Ok(())
}

fn print_figure(f: &Figure) {
    println!(
        "  {:<58} {:>18}   target {:<14} {}",
        f.what,
        f.value,
        f.target,
        // A figure without a target is information, neither met nor missed.
        match (f.target.as_str(), f.met) {
            ("-", _) => "",
            (_, true) => "met",
            (_, false) => "MISSED",
        }
    );
}
