//! One lab cluster's control plane: a real etcd and a real kube-apiserver (built from Go modules
//! by `scripts/controlplane.sh`) in a namespace on the cluster's node network, with TLS from a
//! lab CA, RBAC authorization and service-account tokens signed with a key made at start.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::{ns_run, output, run, stdout_of, wait_for};

pub const API_PORT: u16 = 6443;

/// Where the control plane's binaries are: `LIQONET_CONTROLPLANE_DIR`, or what
/// `scripts/controlplane.sh` builds (once per process; a no-op when already built).
pub fn binaries() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("LIQONET_CONTROLPLANE_DIR") {
            return Ok(PathBuf::from(d));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/controlplane.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): the lab's control plane could not be built",
                script.display(),
                out.status
            ));
        }
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(PathBuf::from(dir.lines().last().unwrap_or_default()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The versions the control plane reports: `kube-apiserver v1.36.3, etcd v3.6.16`.
pub fn versions() -> anyhow::Result<String> {
    let dir = binaries()?;
    let kube = run(&[
        dir.join("kube-apiserver").to_str().unwrap_or_default(),
        "--version",
    ])?;
    let etcd = run(&[dir.join("etcd").to_str().unwrap_or_default(), "--version"])?;
    let etcd = etcd
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .unwrap_or("?");
    Ok(format!(
        "kube-apiserver {}, etcd v{etcd}",
        kube.trim().trim_start_matches("Kubernetes ")
    ))
}

/// A running control plane.
pub struct ControlPlane {
    /// The namespace it runs in, on the node network.
    pub ns: String,
    /// Its address on the node network (the API server's advertise address).
    pub ip: String,
    pub dir: PathBuf,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    scheduler: Option<Child>,
    controller_manager: Option<Child>,
}

impl ControlPlane {
    /// Makes the lab CA and credentials in `dir`, then starts etcd and kube-apiserver in `ns`
    /// (which holds `ip`) and waits until the API server is ready.
    pub fn start(ns: &str, ip: &str, dir: &Path) -> anyhow::Result<ControlPlane> {
        let bin = binaries()?;
        fs::create_dir_all(dir)?;
        make_pki(dir, ip)?;
        let mut cp = ControlPlane {
            ns: ns.to_string(),
            ip: ip.to_string(),
            dir: dir.to_path_buf(),
            bin,
            etcd: None,
            apiserver: None,
            scheduler: None,
            controller_manager: None,
        };
        cp.write_kubeconfig("admin", &cp.server(), "admin")?;
        cp.start_etcd()?;
        cp.start_apiserver()?;
        Ok(cp)
    }

    /// The API server's URL on the node network.
    pub fn server(&self) -> String {
        format!("https://{}:{API_PORT}", self.ip)
    }

    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// The admin kubeconfig (for use inside the lab's namespaces).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    fn spawn(&self, name: &str, args: &[String]) -> anyhow::Result<Child> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))
    }

    /// etcd's data, on tmpfs (its fsyncs would otherwise dominate the lab's disk time), named
    /// after the lab and the cluster (`liqonet-etcd-liqonet-kube-lq<pid>x<n>k-home`), so labs
    /// never share it and a dead lab's is swept.
    fn etcd_data(&self) -> PathBuf {
        let name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        PathBuf::from("/dev/shm").join(format!(
            "liqonet-etcd-{}-{}",
            name(self.dir.parent()),
            name(Some(&self.dir))
        ))
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let data = self.etcd_data();
        let _ = fs::remove_dir_all(&data);
        let args: Vec<String> = [
            self.bin.join("etcd").to_string_lossy().into_owned(),
            format!("--data-dir={}", data.display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]
        .into();
        self.etcd = Some(self.spawn("etcd", &args)?);
        let ok = wait_for(Duration::from_secs(30), || {
            self.etcdctl(&["endpoint", "health"]).is_ok()
        });
        if !ok {
            bail!("etcd did not become healthy:\n{}", self.log_tail("etcd"));
        }
        Ok(())
    }

    fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let d = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let args: Vec<String> = vec![
            self.bin
                .join("kube-apiserver")
                .to_string_lossy()
                .into_owned(),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={API_PORT}"),
            format!("--advertise-address={}", self.ip),
            format!("--cert-dir={}", d("apiserver-certs")),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            // As hardened clusters have it: kubelets may touch only their own Node and pods,
            // and pods are held to the Pod Security baseline unless their namespace says more.
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--admission-control-config-file={}", d("admission.yaml")),
            format!(
                "--kubelet-client-certificate={}",
                d("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", d("apiserver-kubelet-client.key")),
            format!("--kubelet-certificate-authority={}", d("ca.crt")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            // Keep the server's own work small on a 2-core lab.
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=0".into(),
        ];
        self.apiserver = Some(self.spawn("kube-apiserver", &args)?);
        let ok = wait_for(Duration::from_secs(90), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.trim() == "ok")
        });
        if !ok {
            bail!(
                "kube-apiserver did not become ready:\n{}",
                self.log_tail("kube-apiserver")
            );
        }
        Ok(())
    }

    /// Runs this cluster's kubectl as the lab admin, inside the control-plane namespace.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_as(&self.kubeconfig(), args)
    }

    /// Runs the lab's helm as the lab admin, inside the control-plane namespace.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let helm = binaries()?.join("helm");
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig().display());
        let mut v = vec![helm.to_str().unwrap_or_default(), &kubeconfig];
        v.extend_from_slice(args);
        ns_run(&self.ns, &v)
    }

    /// Runs kubectl with `kubeconfig`, feeding `stdin` when given.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_input(kubeconfig, args, None)
    }

    pub fn kubectl_input(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(self.kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().context("cannot run kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        stdout_of(
            &format!("kubectl {}", args.join(" ")),
            child.wait_with_output()?,
        )
    }

    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = self.bin.join("etcdctl");
        let mut v = vec![
            bin.to_str().unwrap_or_default(),
            "--endpoints=http://127.0.0.1:2379",
        ];
        v.extend_from_slice(args);
        ns_run(&self.ns, &v)
    }

    /// Compacts etcd's history up to its current revision: watches resuming from an older
    /// resource version then get 410 Gone.
    pub fn compact(&self) -> anyhow::Result<i64> {
        let status = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&status)?;
        let rev = v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("etcd status without a revision")?;
        self.etcdctl(&["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }

    fn apiserver_pid(&self) -> anyhow::Result<String> {
        // `ip netns exec` execs the server, so the child's pid is the server's.
        Ok(self
            .apiserver
            .as_ref()
            .context("the API server is not running")?
            .id()
            .to_string())
    }

    /// SIGSTOP (hung) or SIGCONT (back) to the API server.
    pub fn signal_apiserver(&self, sig: &str) -> anyhow::Result<()> {
        run(&["kill", &format!("-{sig}"), &self.apiserver_pid()?])?;
        Ok(())
    }

    /// Stops the API server (SIGTERM, then SIGKILL).
    pub fn stop_apiserver(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.apiserver.take() {
            let _ = run(&["kill", "-CONT", &child.id().to_string()]);
            let _ = run(&["kill", "-TERM", &child.id().to_string()]);
            if !wait_for(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        Ok(())
    }

    pub fn start_apiserver_again(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_none() {
            self.start_apiserver()?;
        }
        Ok(())
    }

    /// The processes it runs (etcd, kube-apiserver, and the scheduler and controller manager
    /// once started).
    pub fn pids(&self) -> Vec<u32> {
        [
            &self.etcd,
            &self.apiserver,
            &self.scheduler,
            &self.controller_manager,
        ]
        .into_iter()
        .flatten()
        .map(Child::id)
        .collect()
    }

    /// A kubeconfig for `user` (whose certificate `make_client_cert` made) against `server`.
    pub fn write_kubeconfig(
        &self,
        user: &str,
        server: &str,
        file: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{file}.kubeconfig"));
        let cert = self.dir.join(user);
        self.kubeconfig_at(&path, server, &cert)?;
        Ok(path)
    }

    /// A kubeconfig at `path` against `server` with the client certificate `cert`.crt/.key.
    fn kubeconfig_at(&self, path: &Path, server: &str, cert: &Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: lab\n  user:\n    client-certificate: {cert}.crt\n    client-key: {cert}.key\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: lab, namespace: liqonet}}\ncurrent-context: lab\n",
            ca = self.dir.join("ca.crt").display(),
            cert = cert.display(),
        );
        fs::write(path, text)?;
        Ok(())
    }

    /// A node's credentials in `dir`: the kubelet's client certificate (`system:node:NAME`) and
    /// serving certificate (its IP), kube-proxy's client certificate, and their kubeconfigs.
    pub fn node_credentials(&self, name: &str, ip: &str, dir: &Path) -> anyhow::Result<()> {
        let file = format!("node-{name}");
        client_cert_file(
            &self.dir,
            &file,
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        self.kubeconfig_at(
            &dir.join("kubelet.kubeconfig"),
            &self.server(),
            &self.dir.join(&file),
        )?;
        let serving = format!("node-{name}-serving");
        key_and_csr(&self.dir, &serving, &format!("/CN={name}"))?;
        sign(
            &self.dir,
            &serving,
            &format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip},DNS:{name}\n"),
        )?;
        fs::copy(
            self.dir.join(format!("{serving}.crt")),
            dir.join("kubelet.crt"),
        )?;
        fs::copy(
            self.dir.join(format!("{serving}.key")),
            dir.join("kubelet.key"),
        )?;
        if !self.dir.join("kube-proxy.crt").exists() {
            // Its certificate's user is system:kube-proxy, bound to system:node-proxier by default.
            client_cert_file(&self.dir, "kube-proxy", "system:kube-proxy", &[])?;
        }
        self.kubeconfig_at(
            &dir.join("kube-proxy.kubeconfig"),
            &self.server(),
            &self.dir.join("kube-proxy"),
        )?;
        Ok(())
    }

    /// Starts kube-scheduler and kube-controller-manager (pod CIDRs from 10.244.0.0/16, a /24
    /// per node), each with its own certificate and the default RBAC bindings for it.
    pub fn start_components(&mut self) -> anyhow::Result<()> {
        for (file, user) in [
            ("kube-scheduler", "system:kube-scheduler"),
            ("kube-controller-manager", "system:kube-controller-manager"),
        ] {
            client_cert_file(&self.dir, file, user, &[])?;
            self.kubeconfig_at(
                &self.dir.join(format!("{file}.kubeconfig")),
                &self.server(),
                &self.dir.join(file),
            )?;
        }
        let d = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let kc = |f: &str| {
            let k = d(&format!("{f}.kubeconfig"));
            [
                format!("--kubeconfig={k}"),
                format!("--authentication-kubeconfig={k}"),
                format!("--authorization-kubeconfig={k}"),
            ]
        };
        let mut scheduler = vec![self
            .bin
            .join("kube-scheduler")
            .to_string_lossy()
            .into_owned()];
        scheduler.extend(kc("kube-scheduler"));
        scheduler.extend(["--leader-elect=false".into(), "--v=1".into()]);
        self.scheduler = Some(self.spawn("kube-scheduler", &scheduler)?);
        let mut kcm = vec![self
            .bin
            .join("kube-controller-manager")
            .to_string_lossy()
            .into_owned()];
        kcm.extend(kc("kube-controller-manager"));
        kcm.extend([
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", d("sa.key")),
            format!("--root-ca-file={}", d("ca.crt")),
            "--allocate-node-cidrs=true".into(),
            "--cluster-cidr=10.244.0.0/16".into(),
            "--node-cidr-mask-size=24".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--v=1".into(),
        ]);
        self.controller_manager = Some(self.spawn("kube-controller-manager", &kcm)?);
        Ok(())
    }

    /// A client certificate for `user` in `groups`, signed by the lab CA.
    pub fn make_client_cert(&self, user: &str, groups: &[&str]) -> anyhow::Result<()> {
        client_cert(&self.dir, user, groups)
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn stop(&mut self) {
        for mut child in [self.scheduler.take(), self.controller_manager.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.stop_apiserver();
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(self.etcd_data());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Signs `name.csr` with the lab CA, with the extensions in `ext`.
fn sign(dir: &Path, name: &str, ext: &str) -> anyhow::Result<()> {
    fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    )
}

fn key_and_csr(dir: &Path, name: &str, subject: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ],
    )
}

/// The lab CA, the API server's serving certificate (its lab addresses as SANs; a leaf, not the
/// CA itself, which rustls would refuse), the admin's client certificate (`system:masters`),
/// and the service-account signing key pair.
fn make_pki(dir: &Path, ip: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=liqonet-lab-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    key_and_csr(dir, "apiserver", "/CN=kube-apiserver")?;
    sign(
        dir,
        "apiserver",
        &format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip},IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        ),
    )?;
    client_cert(dir, "admin", &["system:masters"])?;
    // The API server's own identity towards kubelets (logs, exec, port-forward).
    client_cert(dir, "apiserver-kubelet-client", &["system:masters"])?;
    // Pod Security: baseline for every namespace that does not ask for another level.
    fs::write(
        dir.join("admission.yaml"),
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  configuration:\n    apiVersion: pod-security.admission.config.k8s.io/v1\n    kind: PodSecurityConfiguration\n    defaults:\n      enforce: baseline\n      enforce-version: latest\n    exemptions: {}\n",
    )?;
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

fn client_cert(dir: &Path, user: &str, groups: &[&str]) -> anyhow::Result<()> {
    client_cert_file(dir, user, user, groups)
}

/// A client certificate for `user` in `groups`, as `file.crt` and `file.key` in `dir`.
fn client_cert_file(dir: &Path, file: &str, user: &str, groups: &[&str]) -> anyhow::Result<()> {
    let subject: String = groups
        .iter()
        .map(|g| format!("/O={g}"))
        .chain(std::iter::once(format!("/CN={user}")))
        .collect();
    key_and_csr(dir, file, &subject)?;
    sign(
        dir,
        file,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
}

/// Whether `openssl` is there (deps.sh installs it).
pub fn have_openssl() -> bool {
    output(&["openssl", "version"]).is_ok_and(|o| o.status.success())
}
