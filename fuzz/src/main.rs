//! `liqonet-fuzz [--inputs N] [--seed S] [--time-limit SECS] [TARGET...]`
//! `liqonet-fuzz --replay FILE TARGET`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use liqonet_fuzz::driver::{self, pct, thousands, Options};
use liqonet_fuzz::targets;

const USAGE: &str =
    "usage: liqonet-fuzz [--inputs N] [--seed S] [--time-limit SECS] [--crash-dir DIR] [--allow-known] [TARGET...]
       liqonet-fuzz --replay FILE TARGET
       liqonet-fuzz --list";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("liqonet-fuzz: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut opts = Options {
        inputs: 100_000,
        seed: seed_from_clock(),
        time_limit: None,
        crash_dir: default_crash_dir(),
        progress: Some(Duration::from_secs(30)),
        allow_known: false,
    };
    let mut names = Vec::new();
    let mut replay = None;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--inputs" => opts.inputs = parse_count(&value("--inputs")?)?,
            "--seed" => opts.seed = parse_u64(&value("--seed")?)?,
            "--time-limit" => {
                let s: f64 = value("--time-limit")?
                    .parse()
                    .map_err(|_| "--time-limit takes seconds")?;
                opts.time_limit = Some(Duration::from_secs_f64(s));
            }
            "--crash-dir" => opts.crash_dir = PathBuf::from(value("--crash-dir")?),
            "--allow-known" => opts.allow_known = true,
            "--replay" => replay = Some(PathBuf::from(value("--replay")?)),
            "--list" => {
                for t in targets::ALL {
                    println!("{t}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name => names.push(name.to_string()),
        }
    }
    for n in &names {
        if !targets::ALL.contains(&n.as_str()) {
            return Err(format!(
                "no target {n:?} (targets: {})",
                targets::ALL.join(", ")
            ));
        }
    }
    if let Some(file) = replay {
        let [name] = names.as_slice() else {
            return Err("--replay takes one TARGET".into());
        };
        return Ok(replay_one(&file, name));
    }
    if names.is_empty() {
        names = targets::ALL.iter().map(|s| s.to_string()).collect();
    }

    println!(
        "liqonet-fuzz: seed {:#x}, {} inputs per target{}",
        opts.seed,
        thousands(opts.inputs),
        opts.time_limit
            .map(|t| format!(", at most {} s each", t.as_secs_f64()))
            .unwrap_or_default()
    );
    let mut crashed = false;
    for name in &names {
        let name: &'static str = targets::ALL.iter().find(|t| **t == name).unwrap();
        let mut target = targets::make(name).expect("a listed target");
        let r = driver::run(name, target.as_mut(), &opts);
        crashed |= r.crashes > 0;
        let limited = if r.timed_out {
            format!(
                " (time limit: {} of {} inputs)",
                thousands(r.inputs),
                thousands(opts.inputs)
            )
        } else {
            String::new()
        };
        println!(
            "{name}: {} inputs in {:.1} s, {} inputs/s, {} crashes{limited}",
            thousands(r.inputs),
            r.elapsed.as_secs_f64(),
            thousands(r.per_second() as u64),
            r.crashes,
        );
        for line in r.coverage.lines() {
            println!("  {line}");
        }
        if r.known > 0 {
            println!(
                "  {} inputs hit known findings (reported, not fixed yet; --allow-known)",
                thousands(r.known)
            );
        }
        if r.crashes > 0 {
            println!(
                "  {} of inputs crashed; reproducers in {}",
                pct(r.crashes, r.inputs),
                opts.crash_dir.display()
            );
        }
    }
    Ok(if crashed {
        println!("liqonet-fuzz: CRASHES FOUND");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn replay_one(file: &std::path::Path, name: &str) -> ExitCode {
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("liqonet-fuzz: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    driver::install_panic_hook();
    let mut target = targets::make(name).expect("a listed target");
    println!(
        "replaying {} ({} bytes) on {name}",
        file.display(),
        input.len()
    );
    for line in input[..input.len().min(512)].chunks(32) {
        println!("    {}", driver::hex(line));
    }
    match driver::run_one(target.as_mut(), &input) {
        Ok(()) => {
            println!("no crash");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("CRASH: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `target/fuzz/crashes` of the workspace (or of `CARGO_TARGET_DIR`).
fn default_crash_dir() -> PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the fuzz crate sits in the workspace");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("fuzz").join("crashes")
}

fn seed_from_clock() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    liqonet_fuzz::rng::mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number"))
}

/// A count, with `_` separators or a k/M suffix allowed (10M, 20_000).
fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.replace('_', "");
    let (digits, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
        Some('M') => (&t[..t.len() - 1], 1_000_000),
        _ => (t.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .map(|n| n * mul)
        .map_err(|_| format!("{s:?} is not a count"))
}
