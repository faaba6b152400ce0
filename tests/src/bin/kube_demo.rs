//! `make kube-demo`: two clusters on the real Kubernetes control plane, installed from deploy/
//! and peered with the peering CLI; ping and curl from a home pod to a remote pod, both sides'
//! `kubectl get tep -o wide`; then the lab stays up in the background for kubectl, with one
//! `export KUBECONFIG=…` line per cluster. `make kube-demo-down` removes everything.
//!
//! `liqonet-kube-demo up` starts `liqonet-kube-demo serve` detached (its own session) and
//! prints its report as it comes; `serve` holds the lab (and the loopback forwarders into it)
//! until SIGTERM; `down` sends that.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use liqonet_lab::kube::{forward, KubeLab};
use liqonet_lab::probe::{curl, ping, wait_reachable};

/// Where the running demo keeps its pid, report and kubeconfigs.
fn state_dir() -> PathBuf {
    PathBuf::from("/run/liqonet-kube-demo")
}

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let result = match cmd.as_str() {
        "up" => up(),
        "serve" => serve(),
        "down" => down(),
        _ => {
            eprintln!("usage: liqonet-kube-demo up | down");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pid_of_running() -> Option<u32> {
    let pid: u32 = fs::read_to_string(state_dir().join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn up() -> anyhow::Result<()> {
    if let Some(pid) = pid_of_running() {
        anyhow::bail!("a demo is already running (pid {pid}); `make kube-demo-down` removes it");
    }
    let dir = state_dir();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let report = dir.join("report.txt");
    fs::write(&report, "")?;
    let log = fs::File::create(dir.join("serve.log"))?;
    let child = Command::new("setsid")
        .arg(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    fs::write(dir.join("pid"), child.id().to_string())?;
    // Follow the report until the lab is up (or the server gave up).
    let mut shown = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = fs::read_to_string(&report).unwrap_or_default();
        print!("{}", &text[shown..]);
        shown = text.len();
        if text.contains("\nREADY\n") || text.contains("\nFAILED\n") {
            return if text.contains("\nREADY\n") {
                Ok(())
            } else {
                Err(anyhow::anyhow!("see {}", dir.join("serve.log").display()))
            };
        }
        if pid_of_running().is_none() || Instant::now() > deadline {
            let mut log = String::new();
            fs::File::open(dir.join("serve.log"))?.read_to_string(&mut log)?;
            anyhow::bail!("the demo stopped before the lab was up:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn serve() -> anyhow::Result<()> {
    let dir = state_dir();
    let report = dir.join("report.txt");
    let say = |line: &str| {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&report) {
            let _ = writeln!(f, "{line}");
        }
    };
    let (mut stop_rx, stop_tx) = std::os::unix::net::UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, stop_tx.try_clone()?)?;
    }
    say("Building the control plane (kube-apiserver, kubectl, etcd from Go modules; cached after the first time)...");
    let versions = liqonet_lab::kube::controlplane::versions()?;
    say(&format!(
        "Bringing up two clusters, home and foreign, each with its own {versions},"
    ));
    say("two gateway nodes and two workers, all numbering their pods from 10.244.0.0/16; installing");
    say("deploy/ with kubectl, starting the gateway replicas and route agents as their DaemonSets would,");
    say("and peering the clusters with `liqonet-gateway peering-info/peer add --kubernetes`...");
    let lab = match KubeLab::start(&["home", "foreign"]) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("the lab did not come up: {e:#}\nFAILED"));
            return Err(e);
        }
    };
    let shown = (|| -> anyhow::Result<()> {
        for (a, b) in [("home", "foreign"), ("foreign", "home")] {
            lab.wait_phase(a, b, "Connected", Duration::from_secs(60))?;
        }
        let dst = lab.remote_pod_ip("home", "foreign", "w1")?;
        let src = &lab.cluster("home").node("w2").pod;
        say(&format!(
            "\nFrom the home pod on w2 ({}) to the foreign pod on w1 ({}), reached as {dst}:",
            src.ip,
            lab.cluster("foreign").node("w1").pod.ip
        ));
        if !wait_reachable(&src.ns, &dst, Duration::from_secs(20)) {
            anyhow::bail!("{dst} is not reachable");
        }
        let p = ping(&src.ns, &dst, 5)?;
        say(&format!(
            "  ping: {}/5 replies, average {:.2} ms",
            p.received,
            p.rtt_avg_ms.unwrap_or(f64::NAN)
        ));
        say(&format!(
            "  curl: {}",
            curl(&src.ns, &format!("http://{dst}/"))?.trim()
        ));
        for c in ["home", "foreign"] {
            say(&format!("\n{c}$ kubectl -n liqonet get tep -o wide"));
            say(lab
                .cluster(c)
                .kubectl(&["-n", "liqonet", "get", "tep", "-o", "wide"])?
                .trim_end());
        }
        say("\nThe lab stays up. From this shell, with the lab's kubectl (the server's version):");
        let kubectl = lab.cluster("home").cp.kubectl_bin();
        say(&format!(
            "  export PATH={}:$PATH",
            kubectl
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
        for c in &lab.clusters {
            let port = forward::spawn(0, &c.cp.ns, format!("{}:6443", c.cp.ip).parse()?)?;
            let file =
                c.cp.write_kubeconfig("admin", &format!("https://127.0.0.1:{port}"), "host")?;
            let copy = dir.join(format!("{}.kubeconfig", c.name));
            fs::copy(&file, &copy)?;
            say(&format!(
                "  export KUBECONFIG={}   # cluster {}",
                copy.display(),
                c.name
            ));
        }
        say("`make kube-demo-down` removes everything.\nREADY");
        Ok(())
    })();
    if let Err(e) = shown {
        say(&format!("{e:#}\nFAILED"));
        return Err(e);
    }
    let _ = stop_rx.read(&mut [0u8; 1]);
    drop(lab);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let Some(pid) = pid_of_running() else {
        println!("no demo is running");
        let _ = fs::remove_dir_all(state_dir());
        liqonet_lab::netns::sweep_stale();
        return Ok(());
    };
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            anyhow::bail!("the demo (pid {pid}) did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the Kubernetes lab is gone");
    Ok(())
}
