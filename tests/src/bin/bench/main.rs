//! `make bench`, end to end (`e2e`): the same two-gateway lab with plain routing, liqonet and the
//! userspace WireGuards it is compared with, measured in one run; one table, liqonet's ratio to
//! each, and a JSON file to compare across commits. Ratios matter more than absolute figures:
//! machines drift. `liqonet-bench report` prints that table again from the JSON file, beside the
//! engine's micro-benchmark figures.
//! `liqonet-bench failover [--rounds N]` times gateway failovers on the Kubernetes lab instead;
//! `liqonet-bench flood` measures a tunnel under a handshake flood; `liqonet-bench scale` what
//! one gateway and its route agents sustain as peers, networks and nodes grow;
//! `liqonet-bench hold NAME` keeps one implementation's lab up for a profiler.

use std::process::ExitCode;

mod e2e;
mod engine;
mod failover;
mod flood;
mod measure;
mod peers;
mod report;
mod scale;

const USAGE: &str =
    "usage: liqonet-bench [report | failover [--rounds N] | flood | scale [...] | hold NAME]
  (none)    the end-to-end table (LIQONET_BENCH_SECONDS, LIQONET_BENCH_RUNS, LIQONET_BENCH_OUT)
  report    that table again from its JSON file, beside the engine's figures
  failover  gateway failovers on the Kubernetes lab (kill, delete, rollout; 5 rounds)
  flood     a tunnel under a handshake flood
  scale     what a gateway and its route agents sustain as peers, networks and nodes grow
  hold      keep one implementation's lab up for a profiler";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Asked for help, nothing is measured (a lab takes minutes to come up).
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    liqonet_lab::teardown_on_signal();
    if args.first().map(String::as_str) == Some("failover") {
        if let Some(unknown) = args[1..]
            .iter()
            .enumerate()
            .find(|&(i, a)| a != "--rounds" && args.get(i) != Some(&"--rounds".to_string()))
            .map(|(_, a)| a)
        {
            eprintln!("failover: unknown argument {unknown:?}\n{USAGE}");
            return ExitCode::from(2);
        }
        let rounds = match args.iter().position(|a| a == "--rounds") {
            Some(i) => match args.get(i + 1).and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => n,
                _ => {
                    eprintln!("--rounds needs a positive number");
                    return ExitCode::from(2);
                }
            },
            None => 5,
        };
        return match failover::run(rounds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("failover bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let (Some("hold"), Some(name)) = (args.first().map(String::as_str), args.get(1)) {
        return match e2e::hold(name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hold failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("scale") {
        return match scale::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("scale bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let secs: u32 = std::env::var("LIQONET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runs: usize = std::env::var("LIQONET_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if args.first().map(String::as_str) == Some("flood") {
        return match flood::run(secs, runs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flood bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let out = std::env::var("LIQONET_BENCH_OUT").unwrap_or_else(|_| "target/bench/e2e.json".into());
    if args.first().map(String::as_str) == Some("report") {
        // The end of `make bench`: the end-to-end table again, beside the engine's figures.
        if let Err(e) = e2e::report(&out) {
            eprintln!("{e:#}");
        }
        engine::print();
        return ExitCode::SUCCESS;
    }
    if e2e::run(secs, runs, &out) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
