//! `make demo`: bring up the two-cluster lab, reach a foreign pod from a home pod with ping, curl
//! and iperf3, print a short report, tear everything down (also on Ctrl-C).

use std::process::ExitCode;
use std::time::Duration;

use liqonet_lab::probe::{curl, iperf3, ping, wait_reachable};
use liqonet_lab::{Lab, LabSpec};

fn main() -> ExitCode {
    liqonet_lab::teardown_on_signal();
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
    println!("Bringing up the lab: two clusters in network namespaces (a gateway node and two workers each),");
    println!("a liqonet gateway and route agents in each, both numbering their pods from 10.244.0.0/16...");
    let lab = Lab::start(&LabSpec::default())?;
    let (home, foreign) = (lab.home(), lab.cluster("foreign"));
    let dst = lab.ip_of("foreign", "home", false);
    let seen_as = lab.ip_of("home", "foreign", false);
    println!(
        "  home    pods {}  gateway node WAN {}\n  foreign pods {}  gateway node WAN {}",
        home.spec.pod_cidr, home.wan_ip, foreign.spec.pod_cidr, foreign.wan_ip
    );
    println!(
        "From the home pod on worker w1 ({}) to the foreign pod on worker w1 ({}, the same address), reached as {dst}:",
        home.main_pod().ip, foreign.main_pod().ip
    );
    let mut ok = wait_reachable(&home.main_pod().ns, &dst, Duration::from_secs(10));
    if !ok {
        println!(
            "  the tunnel did not come up; gateway log:\n{}",
            lab.log("home-gateway")
        );
        return Ok(false);
    }

    let p = ping(&home.main_pod().ns, &dst, 10)?;
    ok &= p.received == p.sent;
    let rtt = p.rtt_avg_ms.map_or("-".into(), |r| format!("{r:.3} ms"));
    let back = ping(&foreign.main_pod().ns, &seen_as, 5)?;
    ok &= back.received == back.sent;

    let url = format!("http://{dst}/");
    let body = curl(&home.main_pod().ns, &url);
    ok &= body.is_ok();
    let client = format!("{seen_as} - -");
    let logged = lab.http_log("foreign", "w1").contains(&client);
    ok &= logged;

    let perf = iperf3(&home.main_pod().ns, &dst, 5);
    ok &= perf.is_ok();

    println!("\n================ liqonet demo report ================");
    println!(
        "ping    {dst}: {}/{} replies, {:.0}% loss, avg RTT {rtt}",
        p.received,
        p.sent,
        p.loss_percent()
    );
    println!(
        "ping    back, foreign pod -> home pod as {seen_as}: {}/{} replies",
        back.received, back.sent
    );
    match &body {
        Ok(b) => println!("curl    {url} -> {:?}", b.trim()),
        Err(e) => println!("curl    {url} failed: {e}"),
    }
    println!(
        "seen    the foreign pod's HTTP server logged the client as {seen_as}: {}",
        if logged { "yes" } else { "NO" }
    );
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
