//! `make kube-demo`: two clusters on the real Kubernetes control plane and real nodes (kubelet,
//! containerd, kube-proxy), installed from deploy/ with kubectl and peered with the peering CLI;
//! the liqonet pods and which one leads, ping and curl with `kubectl exec` from a home test pod
//! to a remote one, both sides' `kubectl get tep -o wide`; then the lab stays up in the
//! background for kubectl, with one `export KUBECONFIG=…` line per cluster, the test pods still
//! running in `liqonet-test`. `make kube-demo-down` removes everything.
//!
//! `liqonet-kube-demo up` starts `liqonet-kube-demo serve` detached (its own session) and
//! prints its report as it comes; `serve` holds the lab (and the loopback forwarders into it)
//! until SIGTERM; `down` sends that.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use liqonet_lab::kube::forward;
use liqonet_lab::kube::lab::KubeLab;

/// Where the running demo keeps its pid, report and kubeconfigs (`LIQONET_KUBE_DEMO_DIR`
/// moves it: the test of `down` runs a demo of its own beside a user's).
fn state_dir() -> PathBuf {
    std::env::var_os("LIQONET_KUBE_DEMO_DIR")
        .map_or_else(|| PathBuf::from("/run/liqonet-kube-demo"), PathBuf::from)
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
    say("Building the clusters' parts from Go modules (control plane, kubelet, kube-proxy, containerd,");
    say("runc, CNI plugins; cached after the first time)...");
    let versions = liqonet_lab::kube::controlplane::versions()?;
    let nodes = liqonet_lab::kube::node::versions()?;
    say(&format!(
        "Bringing up two clusters, home and foreign, each with its own {versions},"
    ));
    say("kube-scheduler and kube-controller-manager, and three real nodes (gw1, gw2: gateway nodes;");
    say("w1) each running containerd, a kubelet and kube-proxy:");
    for line in nodes.lines() {
        say(&format!("  {line}"));
    }
    say("The project's image and the test pods' image are built offline and imported into every node;");
    say("deploy/ is applied with kubectl, the clusters are peered with");
    say("`liqonet-gateway peering-info/peer add --kubernetes`...");
    let lab = match KubeLab::start(&["home", "foreign"]).and_then(|lab| {
        lab.peer("home", "foreign")?;
        Ok(lab)
    }) {
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
        let home = lab.cluster("home");
        say("\nhome$ kubectl -n liqonet get pods -o wide");
        say(home
            .kubectl(&["-n", "liqonet", "get", "pods", "-o", "wide"])?
            .trim_end());
        say(&format!(
            "The leader (the Lease's holder) runs on {}; the gateway Service leads to {:?}.",
            home.leader().unwrap_or_else(|| "?".into()),
            home.service_endpoints()
        ));
        let (client, client_ip) = lab.test_pod("home", "w1")?;
        let (_, server_ip) = lab.test_pod("foreign", "w1")?;
        let dst = lab.remote_ip("home", "foreign", &server_ip)?;
        say(&format!(
            "\nFrom the home test pod on w1 ({client_ip}) to the foreign test pod on w1 ({server_ip}), reached as {dst}:"
        ));
        if !liqonet_lab::netns::wait_for(Duration::from_secs(30), || {
            lab.exec("home", &client, &["ping", "-c", "1", "-W", "1", &dst])
                .is_ok()
        }) {
            anyhow::bail!("{dst} is not reachable");
        }
        say(&format!(
            "home$ kubectl -n liqonet-test exec {client} -- ping -c 5 {dst}"
        ));
        say(lab
            .exec("home", &client, &["ping", "-c", "5", "-i", "0.2", &dst])?
            .trim_end());
        say(&format!(
            "home$ kubectl -n liqonet-test exec {client} -- curl http://{dst}/"
        ));
        say(lab
            .exec(
                "home",
                &client,
                &["curl", "-sS", "--max-time", "5", &format!("http://{dst}/")],
            )?
            .trim_end());
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
        liqonet_lab::kube::node::sweep_stale_cgroups();
        liqonet_lab::netns::sweep_stale();
        liqonet_lab::kube::install::sweep_stale_files();
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
