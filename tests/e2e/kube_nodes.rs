//! The Kubernetes lab on real nodes: kubelet, containerd and kube-proxy run what deploy/
//! declares, from the project's image built offline.
//!
//! `#[ignore]`d in the ordinary pass: `make test` runs them one at a time in a step of their own.

use std::time::Duration;

use liqonet_lab::kube::lab::KubeLab;
use liqonet_lab::netns::wait_for;

#[test]
#[ignore = "Kubernetes lab on real nodes: make test runs it in its own step"]
fn the_daemonsets_run_on_real_nodes() {
    println!("{}", liqonet_lab::kube::node::versions().unwrap());
    let lab = KubeLab::start(&["home"]).unwrap();
    let c = lab.cluster("home");
    let nodes = c.get_json(&["nodes"]).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let info = &n["status"]["nodeInfo"];
        println!(
            "node {}: kubelet {}, {}, {}",
            n["metadata"]["name"],
            info["kubeletVersion"],
            info["containerRuntimeVersion"],
            info["osImage"]
        );
        assert_eq!(info["kubeletVersion"], "v1.36.3");
        assert!(info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://2.3"));
    }
    // Every node runs a route agent, every gateway node a gateway replica; all Running.
    let running = wait_for(Duration::from_secs(120), || {
        c.get_json(&["-n", "liqonet", "pods"]).is_ok_and(|p| {
            let pods = p["items"].as_array().cloned().unwrap_or_default();
            pods.len() == 5 && pods.iter().all(|p| p["status"]["phase"] == "Running")
        })
    });
    println!(
        "{}",
        c.kubectl(&["-n", "liqonet", "get", "pods", "-o", "wide"])
            .unwrap()
    );
    assert!(running);
    // Every healthy replica is Ready (the kubelet probes /readyz), and the Service has one
    // endpoint: the leader's node.
    let ready = wait_for(Duration::from_secs(90), || c.ready_gateways().len() == 2);
    let leader = c.leader();
    let endpoints = c.service_endpoints();
    println!("leader {leader:?}, gateway Service endpoints {endpoints:?}");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(Some(&endpoints[0]), leader.as_ref());
    // The follower watches the Lease (RBAC grants list and watch by name): the API server
    // holds a namespaced watch of leases open (the controller manager's watch of node leases
    // spans every namespace), and refused no lease request.
    let metrics = c.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    let lease_watches: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains("resource=\"leases\"")
                && l.contains("scope=\"namespace\"")
                && l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"leases\"")
                && l.contains("code=\"403\"")
        })
        .collect();
    println!("watches of leases open: {lease_watches}; leases requests refused: {refused:?}");
    assert!(lease_watches >= 1.0, "no watch of the Lease");
    assert!(refused.is_empty(), "{refused:?}");
    // An upgrade from a release whose Service had a selector leaves the slice Kubernetes'
    // controller made, naming the old leader: the leader removes it.
    let leftover = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "liqonet-gateway-old12", "namespace": "liqonet", "labels": {
            "kubernetes.io/service-name": "liqonet-gateway",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["172.20.0.12"], "conditions": {"ready": true}, "nodeName": "gw2"}],
        "ports": [{"name": "wireguard", "port": 51840, "protocol": "UDP"}],
    });
    // (The leader may remove it at once: it rechecks every 2 s.)
    let created =
        c.cp.kubectl_input(
            &c.cp.kubeconfig(),
            &["create", "-f", "-"],
            Some(&leftover.to_string()),
        )
        .unwrap();
    assert!(created.contains("created"), "{created}");
    let cleaned = wait_for(Duration::from_secs(10), || {
        c.service_endpoints() == endpoints
    });
    println!("a slice left by an old selector: removed by the leader: {cleaned}");
    assert!(cleaned, "{:?}", c.service_endpoints());
    println!(
        "{}",
        c.kubectl(&["-n", "liqonet", "get", "pods", "-o", "wide"])
            .unwrap()
    );
    for ds in ["liqonet-gateway", "liqonet-route-agent"] {
        let logs = c
            .kubectl(&["-n", "liqonet", "logs", &format!("ds/{ds}"), "--tail=20"])
            .unwrap_or_else(|e| e.to_string());
        println!("kubectl logs ds/{ds}:\n{logs}");
    }
    assert!(ready, "not every gateway replica became Ready");
    // `wg show` on the leader's node reaches the gateway through the hostPath socket directory.
    let leader = c
        .get_json(&["-n", "liqonet", "lease", "liqonet-gateway"])
        .unwrap();
    let holder = leader["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = c.get_json(&["-n", "liqonet", "pod", &holder]).unwrap();
    let node = pod["spec"]["nodeName"].as_str().unwrap().to_string();
    let wg = lab
        .cluster("home")
        .running
        .iter()
        .find(|n| n.spec.name == node)
        .unwrap()
        .exec(&["wg", "show"])
        .unwrap();
    println!("wg show on {node}:\n{wg}");
    assert!(wg.contains("interface: liqo0"), "{wg}");

    // Pod Security enforces "baseline" by default: without the namespace's label, the pods
    // deploy/ declares are refused (a server-side dry run of each DaemonSet's pod).
    for ds in ["liqonet-gateway", "liqonet-route-agent"] {
        let d = c.get_json(&["-n", "liqonet", "ds", ds]).unwrap();
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{ds}-dry-run"), "namespace": "liqonet"},
            "spec": d["spec"]["template"]["spec"],
        });
        pod["spec"]["nodeName"] = "w1".into();
        let file = lab.dir.join(format!("{ds}-pod.json"));
        std::fs::write(&file, pod.to_string()).unwrap();
        let create = |c: &liqonet_lab::kube::lab::KubeCluster| {
            c.kubectl(&["create", "--dry-run=server", "-f", file.to_str().unwrap()])
        };
        create(c).unwrap();
        c.kubectl(&[
            "label",
            "ns",
            "liqonet",
            "pod-security.kubernetes.io/enforce-",
        ])
        .unwrap();
        let refused = create(c).unwrap_err().to_string();
        c.kubectl(&[
            "label",
            "ns",
            "liqonet",
            "pod-security.kubernetes.io/enforce=privileged",
        ])
        .unwrap();
        println!("{ds}'s pod without the namespace's label: {refused}");
        assert!(
            refused.contains("violates PodSecurity \"baseline"),
            "{refused}"
        );
    }

    // Torn down, nothing is left: no namespace, cgroup, process or mount of the lab's.
    let (prefix, dir) = (lab.prefix.clone(), lab.dir.clone());
    drop(lab);
    let namespaces = liqonet_lab::netns::list();
    assert!(
        !namespaces.iter().any(|n| n.starts_with(&prefix)),
        "{namespaces:?}"
    );
    let cgroups: Vec<String> = host_view()[2]
        .iter()
        .filter(|c| c.contains(&prefix))
        .cloned()
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
    let ps = liqonet_lab::netns::run(&["ps", "-eo", "args"]).unwrap();
    assert!(
        !ps.lines().any(|l| l.contains(dir.to_str().unwrap())),
        "processes of the lab left:\n{ps}"
    );
}

#[test]
#[ignore = "Kubernetes lab on real nodes: make test runs it in its own step"]
fn a_rollout_of_the_gateways_completes_with_one_endpoint_throughout() {
    let lab = KubeLab::start(&["home"]).unwrap();
    let c = lab.cluster("home");
    assert!(wait_for(Duration::from_secs(60), || c
        .ready_gateways()
        .len()
        == 2));
    let before = c.service_endpoints();
    c.kubectl(&["-n", "liqonet", "rollout", "restart", "ds/liqonet-gateway"])
        .unwrap();
    // Sample the Service's endpoints while the DaemonSet rolls: never two.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = {
        let stop = stop.clone();
        let cp_ns = c.cp.ns.clone();
        let kubectl = c.cp.kubectl_bin();
        let kubeconfig = c.cp.kubeconfig();
        std::thread::spawn(move || {
            let mut most = 0;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = liqonet_lab::netns::ns_run(
                    &cp_ns,
                    &[
                        kubectl.to_str().unwrap(),
                        &format!("--kubeconfig={}", kubeconfig.display()),
                        "-n",
                        "liqonet",
                        "get",
                        "endpointslices",
                        "-l",
                        "kubernetes.io/service-name=liqonet-gateway",
                        "-o",
                        "jsonpath={.items[*].endpoints[*].addresses[0]}",
                    ],
                )
                .unwrap_or_default();
                most = most.max(out.split_whitespace().count());
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (most, n)
        })
    };
    let status = c.rollout_status("liqonet-gateway");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most, n) = samples.join().unwrap();
    println!("rollout status: {status:?}");
    println!(
        "endpoints before {before:?}; at most {most} endpoint(s) in {n} samples during the rollout"
    );
    status.unwrap();
    assert!(most <= 1, "{most} endpoints at once");
    assert!(wait_for(Duration::from_secs(30), || {
        let e = c.service_endpoints();
        e.len() == 1 && Some(&e[0]) == c.leader().as_ref()
    }));
}

#[test]
#[ignore = "Kubernetes lab on real nodes: make test runs it in its own step"]
fn the_leader_fails_over_every_way_a_cluster_can_take_it() {
    use liqonet_lab::kube::failover::{fail_over, Failover, Probed};
    let mut lab = KubeLab::start(&["home", "foreign"]).unwrap();
    lab.peer("home", "foreign").unwrap();
    let probed = Probed::find(&lab, "home", "foreign").unwrap();
    let reachable = |lab: &KubeLab| probed.reachable(lab, "home", "foreign");
    assert!(wait_for(Duration::from_secs(60), || reachable(&lab)));
    for case in [
        Failover::Kill,
        Failover::Delete,
        Failover::Rollout,
        Failover::NodeCrash,
    ] {
        let o = fail_over(&mut lab, "home", "foreign", &probed, case).unwrap();
        for (label, g) in [("home → foreign", &o.there), ("foreign → home", &o.back)] {
            println!(
                "{case:?} of home's leader ({}): {label} outage {:.2?}, {:.2?} silent in all ({} of {} lost)",
                o.old,
                g.longest,
                g.silent,
                g.lost(),
                g.sent
            );
        }
        println!(
            "{case:?}: leader now {:?}, Service endpoints {:?}, replicas forwarding at most {}",
            o.new, o.endpoints, o.most_forwarding
        );
        assert!(o.settled, "{case:?}: did not settle");
        assert!(o.most_forwarding <= 1, "{case:?}: {o:?}");
        assert!(
            wait_for(Duration::from_secs(20), || reachable(&lab)),
            "{case:?}: traffic did not come back both ways"
        );
        let took = lab.wait_routes("home", Duration::from_secs(30)).unwrap();
        println!("{case:?}: routes exact on every node of home after {took:.2?}");
    }

    // The far side's leader killed: its new leader finds home's leader through home's node
    // port on its own.
    let far = Probed::find(&lab, "foreign", "home").unwrap();
    let o = fail_over(&mut lab, "foreign", "home", &far, Failover::Kill).unwrap();
    println!(
        "Kill of foreign's leader ({}): outage {:.2?} (foreign → home {:.2?}, home → foreign {:.2?}); leader now {:?}, endpoints {:?}",
        o.old,
        o.outage(),
        o.there.longest,
        o.back.longest,
        o.new,
        o.endpoints
    );
    assert!(o.settled && o.most_forwarding <= 1, "{o:?}");
    assert!(wait_for(Duration::from_secs(20), || reachable(&lab)));
    lab.wait_routes("foreign", Duration::from_secs(30)).unwrap();

    // The route agent on w1: its pod deleted, then its process killed (the kubelet restarts
    // it). Its routes are exact again, and never duplicated meanwhile.
    let w1 = lab.cluster("home").node("w1").ns.clone();
    for how in ["delete pod", "kill -9"] {
        let c = lab.cluster("home");
        match how {
            "delete pod" => {
                let pods = c
                    .get_json(&[
                        "-n",
                        "liqonet",
                        "pods",
                        "-l",
                        "app.kubernetes.io/component=route-agent",
                    ])
                    .unwrap();
                let pod = pods["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["spec"]["nodeName"] == "w1")
                    .and_then(|p| p["metadata"]["name"].as_str())
                    .unwrap()
                    .to_string();
                c.kubectl(&["-n", "liqonet", "delete", "pod", &pod, "--wait=false"])
                    .unwrap();
            }
            _ => {
                let pid = lab.process_on("home", "w1", "liqonet-route-a").unwrap();
                liqonet_lab::netns::run(&["kill", "-KILL", &pid.to_string()]).unwrap();
            }
        }
        let t0 = std::time::Instant::now();
        let mut duplicated = Vec::new();
        while t0.elapsed() < Duration::from_secs(8) {
            if let Ok((routes, rules)) = liqonet_lab::kube::routes::agent_state(&w1) {
                for list in [routes, rules] {
                    let mut sorted = list.clone();
                    sorted.sort();
                    sorted.dedup();
                    if sorted.len() != list.len() {
                        duplicated.push(list);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = lab.wait_routes("home", Duration::from_secs(30)).unwrap();
        println!("route agent on w1, {how}: routes exact again ({took:.2?} after 8 s of watching), never duplicated");
        assert!(duplicated.is_empty(), "{how}: {duplicated:?}");
        assert!(wait_for(Duration::from_secs(20), || reachable(&lab)));
    }
}

/// What the host shows of labs: its own interfaces, network namespaces, the lab cgroups (every
/// hierarchy), mounts, and every process's command line.
fn host_view() -> [Vec<String>; 5] {
    let interfaces = liqonet_lab::netns::run(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    let mut cgroups = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(d) = std::fs::read_dir(h.path().join("liqonet-lab")) {
            cgroups.extend(d.flatten().map(|e| e.path().display().to_string()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let ps = liqonet_lab::netns::run(&["ps", "-eo", "args"])
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    [interfaces, liqonet_lab::netns::list(), cgroups, mounts, ps]
}

#[test]
#[ignore = "Kubernetes lab on real nodes: make test runs it in its own step"]
fn make_kube_demo_down_leaves_nothing() {
    let bin = liqonet_lab::lab::bin_dir()
        .unwrap()
        .join("liqonet-kube-demo");
    let state = std::env::temp_dir().join(format!("liqonet-kube-demo-test-{}", std::process::id()));
    let demo = |cmd: &str| {
        let out = std::process::Command::new(&bin)
            .arg(cmd)
            .env("LIQONET_KUBE_DEMO_DIR", &state)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kube-demo {cmd}: {text}{err}");
        text
    };
    let before = host_view();
    let report = demo("up");
    println!("{report}");
    let pid = std::fs::read_to_string(state.join("pid")).unwrap();
    let tag = format!("lq{}x", pid.trim());
    // The printed exports work from the host's shell: the lab's kubectl through the loopback
    // forwarders, one kubeconfig per cluster.
    let path = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("export PATH="))
        .and_then(|p| p.strip_suffix(":$PATH"))
        .unwrap()
        .to_string();
    let kubeconfigs: Vec<(String, String)> = report
        .lines()
        .filter_map(|l| {
            let (file, cluster) = l
                .trim()
                .strip_prefix("export KUBECONFIG=")?
                .split_once("# cluster ")?;
            Some((file.trim().to_string(), cluster.trim().to_string()))
        })
        .collect();
    assert_eq!(kubeconfigs.len(), 2, "{report}");
    let mut ports = Vec::new();
    for (file, cluster) in &kubeconfigs {
        assert!(file.contains(cluster.as_str()), "{file} for {cluster}");
        let server = std::fs::read_to_string(file).unwrap();
        let port = server
            .split("https://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap()
            .to_string();
        ports.push(port);
        let pods = liqonet_lab::netns::run(&[
            &format!("{path}/kubectl"),
            &format!("--kubeconfig={file}"),
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace} {.status.phase}{\"\\n\"}{end}",
        ])
        .unwrap();
        println!("{cluster}: pods by namespace and phase:\n{pods}");
        // The test pods keep running, one per node; nothing runs outside liqonet, kube-system
        // and liqonet-test.
        let tests = pods
            .lines()
            .filter(|l| l.starts_with("liqonet-test "))
            .count();
        assert!(tests >= 3, "{pods}");
        assert!(
            pods.lines().all(|l| {
                let (ns, phase) = l.split_once(' ').unwrap_or_default();
                ["liqonet", "kube-system", "liqonet-test"].contains(&ns) && phase == "Running"
            }),
            "{pods}"
        );
    }

    let said = demo("down");
    println!("{said}");
    let after = host_view();
    let [interfaces, namespaces, cgroups, mounts, ps] = &after;
    let new_interfaces: Vec<&String> = interfaces
        .iter()
        .filter(|i| !before[0].contains(i))
        .collect();
    assert!(
        new_interfaces.is_empty(),
        "interfaces left on the host: {new_interfaces:?}"
    );
    for (what, left) in [
        ("network namespaces", namespaces),
        ("cgroups", cgroups),
        ("mounts", mounts),
        ("processes", ps),
    ] {
        let left: Vec<&String> = left.iter().filter(|l| l.contains(&tag)).collect();
        assert!(left.is_empty(), "{what} of the demo left: {left:?}");
    }
    assert!(
        !ps.iter().any(|l| l.contains("liqonet-kube-demo serve")),
        "{ps:?}"
    );
    assert!(!state.exists(), "{} left", state.display());
    for dir in [std::env::temp_dir(), "/dev/shm".into()] {
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&tag))
            .collect();
        assert!(left.is_empty(), "{} holds {left:?}", dir.display());
    }
    for port in ports {
        assert!(
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "the forwarder on port {port} still answers"
        );
    }
    println!("make kube-demo-down: no process, mount, cgroup, namespace, interface or file of the demo left");
}
