//! `make demo`: bring up the two-cluster lab, reach a foreign pod from a home pod with ping, curl
//! and iperf3, print a short report, tear everything down (also on Ctrl-C).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use liqonet_lab::netns::remove_prefixed;
use liqonet_lab::probe::{curl, iperf3, ping, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

fn main() -> ExitCode {
    // Ctrl-C or SIGTERM: remove this process's labs before exiting.
    if let Ok((mut rx, tx)) = UnixStream::pair() {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Ok(tx) = tx.try_clone() {
                let _ = signal_hook::low_level::pipe::register(sig, tx);
            }
        }
        std::thread::spawn(move || {
            let _ = rx.read(&mut [0u8; 1]);
            eprintln!("\ninterrupted: tearing the lab down");
            remove_prefixed(&format!("lq{}x", std::process::id()));
            std::process::exit(130);
        });
    }
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> anyhow::Result<bool> {
    println!(
        "Bringing up the lab: two clusters in network namespaces, a liqonet gateway in each..."
    );
    let lab = Lab::start(&LabSpec::default())?;
    let (home, foreign) = (lab.home(), lab.cluster("foreign"));
    println!(
        "  home    pods {}  gateway node WAN {}\n  foreign pods {}  gateway node WAN {}",
        home.spec.pod_cidr, home.wan_ip, foreign.spec.pod_cidr, foreign.wan_ip
    );
    println!(
        "From home pod {} to foreign pod {}:",
        home.pod_ip, foreign.pod_ip
    );
    let mut ok = wait_reachable(&home.pod_ns, &foreign.pod_ip, Duration::from_secs(10));
    if !ok {
        println!(
            "  the tunnel did not come up; gateway log:\n{}",
            lab.log("home-gateway")
        );
        return Ok(false);
    }

    let p = ping(&home.pod_ns, &foreign.pod_ip, 10)?;
    ok &= p.received == p.sent;
    let rtt = p.rtt_avg_ms.map_or("-".into(), |r| format!("{r:.3} ms"));
    let back = ping(&foreign.pod_ns, &home.pod_ip, 5)?;
    ok &= back.received == back.sent;

    let url = format!("http://{}/", foreign.pod_ip);
    let body = curl(&home.pod_ns, &url);
    ok &= body.is_ok();

    let perf = iperf3(&home.pod_ns, &foreign.pod_ip, 5);
    ok &= perf.is_ok();

    println!("\n================ liqonet demo report ================");
    println!(
        "ping    {}/{} replies, {:.0}% loss, avg RTT {rtt}",
        p.received,
        p.sent,
        p.loss_percent()
    );
    println!(
        "ping    (foreign pod -> home pod) {}/{} replies",
        back.received, back.sent
    );
    match &body {
        Ok(b) => println!("curl    {url} -> {:?}", b.trim()),
        Err(e) => println!("curl    {url} failed: {e}"),
    }
    match &perf {
        Ok(r) => println!(
            "iperf3  {:.2} Gbit/s TCP for 5 s ({} retransmits)",
            r.bits_per_second / 1e9,
            r.retransmits
        ),
        Err(e) => println!("iperf3  failed: {e}"),
    }
    println!("result  {}", if ok { "OK" } else { "FAILED" });
    println!("=====================================================");
    println!("Tearing the lab down.");
    Ok(ok)
}
