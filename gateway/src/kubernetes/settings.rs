//! Kubernetes mode's local settings: flags, each with an environment variable (the manifests set
//! them from the `liqonet-gateway` ConfigMap and the downward API). Peers are not settings here:
//! they are TunnelEndpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser};
use liqonet_proto::config::{
    ConfigError, ConfigErrors, GatewayConfig, IpamConfig, Parsed, ProbeConfig, DEFAULT_INTERFACE,
    DEFAULT_LISTEN_PORT, DEFAULT_MTU, DEFAULT_REALTIME_PRIORITY,
};
use liqonet_proto::Cidr;

use super::lease::Timings;

#[derive(Args, Debug, Clone)]
pub struct KubeSettings {
    /// This cluster's ID (required in Kubernetes mode).
    #[arg(long, env = "LIQONET_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// This cluster's own networks (pod and service CIDRs), comma-separated.
    #[arg(long, env = "LIQONET_LOCAL_NETWORKS", value_delimiter = ',')]
    pub local_networks: Vec<Cidr>,
    #[arg(long, env = "LIQONET_INTERFACE", default_value = DEFAULT_INTERFACE)]
    pub interface: String,
    #[arg(long, env = "LIQONET_LISTEN_PORT", default_value_t = DEFAULT_LISTEN_PORT)]
    pub listen_port: u16,
    #[arg(long, env = "LIQONET_MTU", default_value_t = DEFAULT_MTU)]
    pub mtu: u16,
    /// Host addresses for the TUN device (see `interfaceAddresses` of the standalone config).
    #[arg(long, env = "LIQONET_INTERFACE_ADDRESSES", value_delimiter = ',')]
    pub interface_addresses: Vec<Cidr>,
    /// Where `remapped: auto` prefixes come from (default: the standalone default pools).
    #[arg(long, env = "LIQONET_IPAM_POOLS", value_delimiter = ',')]
    pub ipam_pools: Vec<Cidr>,
    /// Prefixes IPAM never hands out.
    #[arg(long, env = "LIQONET_IPAM_RESERVED", value_delimiter = ',')]
    pub ipam_reserved: Vec<Cidr>,
    /// Segmentation offloads (true or false).
    #[arg(long, env = "LIQONET_OFFLOAD", default_value_t = true, action = ArgAction::Set)]
    pub offload: bool,
    /// The data-path thread's real-time priority (1-99; 0: normal priority).
    #[arg(long, env = "LIQONET_REALTIME_PRIORITY", default_value_t = DEFAULT_REALTIME_PRIORITY)]
    pub realtime_priority: u8,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "LIQONET_HEALTH_ADDRESS", default_value = "0.0.0.0:9640")]
    pub health_address: SocketAddr,
    /// Namespace of the TunnelEndpoints, the keys Secret and the Lease (default: the client's,
    /// which in a pod is the pod's own).
    #[arg(long, env = "LIQONET_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's node (downward API `spec.nodeName`), published in the status.
    #[arg(long, env = "LIQONET_NODE_NAME")]
    pub node_name: Option<String>,
    /// This replica's node IP (downward API `status.hostIP`), published in the status.
    #[arg(long, env = "LIQONET_NODE_IP")]
    pub node_ip: Option<String>,
    /// This replica's identity in the Lease (downward API `metadata.name`).
    #[arg(long, env = "LIQONET_POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(
        long,
        env = "LIQONET_KEYS_SECRET",
        default_value = "liqonet-gateway-keys"
    )]
    pub keys_secret: String,
    #[arg(long, env = "LIQONET_LEASE", default_value = "liqonet-gateway")]
    pub lease: String,
    /// The gateway Service (no selector): the leader writes its EndpointSlice, of the same name.
    #[arg(long, env = "LIQONET_SERVICE", default_value = "liqonet-gateway")]
    pub service: String,
    /// How long a leader's Lease stays valid without renewal (whole seconds in the Lease).
    #[arg(long, env = "LIQONET_LEASE_DURATION", default_value = "1s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Every Lease call is abandoned after this long, so a leader learns within it that
    /// another replica took the Lease (docs/failover.md).
    #[arg(long, env = "LIQONET_RENEW_DEADLINE", default_value = "500ms", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often the leader renews and followers look at the Lease.
    #[arg(long, env = "LIQONET_RETRY_PERIOD", default_value = "150ms", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Traffic counters in TunnelEndpoint status are refreshed at most this often.
    #[arg(long, env = "LIQONET_STATUS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// How often every peer is probed through the tunnel (0s: never; peers are then judged by
    /// their sessions alone).
    #[arg(long, env = "LIQONET_PROBE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// Unanswered probes in a row that make a peer down.
    #[arg(long, env = "LIQONET_PROBE_MISSES", default_value_t = 5)]
    pub probe_misses: u32,
}

/// `250ms`, `1s`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (as 250ms, 1s, 1.5s, 2m)");
    let (number, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .ok_or_else(bad)?;
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A flag as messages name it: `--flag (LIQONET_FLAG)`.
fn flag_and_var(flag: &str) -> String {
    format!(
        "--{flag} (LIQONET_{})",
        flag.replace('-', "_").to_uppercase()
    )
}

/// Where each settings field comes from, for messages: config path → flag and variable.
fn source_of(path: &str) -> String {
    let field = path.split(['[', '.']).next().unwrap_or(path);
    let flag = match field {
        "clusterID" => "cluster-id",
        "localNetworks" => "local-networks",
        "interface" => "interface",
        "listenPort" => "listen-port",
        "mtu" => "mtu",
        "interfaceAddresses" => "interface-addresses",
        "realtimePriority" => "realtime-priority",
        "ipam" if path.contains("reserved") => "ipam-reserved",
        "ipam" => "ipam-pools",
        // The flag is a duration, the message counts milliseconds.
        "probes" if path.ends_with("intervalMs") => {
            return format!("{} (in ms)", flag_and_var("probe-interval"))
        }
        "probes" => return flag_and_var("probe-misses"),
        _ => return path.to_string(),
    };
    format!("{}{}", flag_and_var(flag), &path[field.len()..])
}

impl KubeSettings {
    /// The settings as a gateway config without peers (peers come from TunnelEndpoints), so
    /// both modes share validation and IPAM. Errors name the flag, its variable and the value.
    pub fn to_config(&self) -> Result<GatewayConfig, ConfigErrors> {
        let mut errs = Vec::new();
        let mut required = |flag: &str, value: &Option<String>| -> String {
            value.clone().unwrap_or_else(|| {
                errs.push(ConfigError {
                    path: flag_and_var(flag),
                    message: "is required in Kubernetes mode".into(),
                });
                String::new()
            })
        };
        let cluster_id = required("cluster-id", &self.cluster_id);
        let config = GatewayConfig {
            cluster_id,
            interface: self.interface.clone(),
            listen_port: self.listen_port,
            // The key comes from a Secret; this names it for messages only.
            private_key_file: PathBuf::from(format!("secret/{}", self.keys_secret)),
            mtu: self.mtu,
            local_networks: self.local_networks.clone(),
            interface_addresses: self.interface_addresses.clone(),
            metrics_address: Some(Parsed(self.health_address)),
            peers: Vec::new(),
            ipam: IpamConfig {
                pools: if self.ipam_pools.is_empty() {
                    IpamConfig::default().pools
                } else {
                    self.ipam_pools.clone()
                },
                reserved: self.ipam_reserved.clone(),
            },
            offload: self.offload,
            realtime_priority: self.realtime_priority,
            probes: ProbeConfig {
                interval_ms: u32::try_from(self.probe_interval.as_millis()).unwrap_or(u32::MAX),
                misses: self.probe_misses,
            },
        };
        let missing_id = self.cluster_id.is_none();
        if let Err(ConfigErrors(e)) = config.validate() {
            // A missing cluster ID is already said; its emptiness need not be.
            let e = e
                .into_iter()
                .filter(|e| !(missing_id && e.path == "clusterID"));
            errs.extend(e.map(|e| ConfigError {
                path: source_of(&e.path),
                message: e.message,
            }));
        }
        if errs.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Where this replica runs, for the Lease and the status; each must be set in a pod.
    pub fn identity(&self) -> Result<(String, String, String), ConfigErrors> {
        let mut errs = Vec::new();
        let mut get = |flag: &str, v: &Option<String>| match v {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                errs.push(ConfigError {
                    path: flag_and_var(flag),
                    message: "is required in Kubernetes mode (the manifests set it from the downward API)".into(),
                });
                String::new()
            }
        };
        let ids = (
            get("pod-name", &self.pod_name),
            get("node-name", &self.node_name),
            get("node-ip", &self.node_ip),
        );
        if errs.is_empty() {
            Ok(ids)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    pub fn timings(&self) -> Result<Timings, ConfigErrors> {
        Timings::new(self.lease_duration, self.renew_deadline, self.retry_period).map_err(
            |message| {
                ConfigErrors(vec![ConfigError {
                    path: "--lease-duration, --renew-deadline, --retry-period".into(),
                    message,
                }])
            },
        )
    }

    /// The settings a ConfigMap holds as environment variables (as the gateway's `envFrom`
    /// reads them), parsed exactly as the gateway parses its environment.
    pub fn from_env_map(vars: &BTreeMap<String, String>) -> Result<Self, String> {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: KubeSettings,
        }
        let cmd = Wrapper::command();
        let mut argv = vec!["liqonet-gateway".to_string()];
        for arg in cmd.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            if let Some(value) = env.to_str().and_then(|e| vars.get(e)) {
                argv.push(format!("--{long}={value}"));
            }
        }
        let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        Wrapper::from_arg_matches(&matches)
            .map(|w| w.settings)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<KubeSettings, String> {
        KubeSettings::from_env_map(
            &vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_config_map_parses_like_the_environment() {
        let s = settings(&[
            ("LIQONET_CLUSTER_ID", "home"),
            ("LIQONET_LOCAL_NETWORKS", "10.244.0.0/16,10.96.0.0/12"),
            ("LIQONET_LISTEN_PORT", "51999"),
            ("LIQONET_OFFLOAD", "false"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        let c = s.to_config().unwrap();
        assert_eq!(c.cluster_id, "home");
        assert_eq!(c.local_networks.len(), 2);
        assert_eq!(c.listen_port, 51999);
        assert!(!c.offload);
        assert_eq!(s.lease_duration, Duration::from_secs(1));
        assert_eq!(c.probes, ProbeConfig::default());
        let s = settings(&[
            ("LIQONET_CLUSTER_ID", "home"),
            ("LIQONET_PROBE_INTERVAL", "0s"),
            ("LIQONET_PROBE_MISSES", "3"),
        ])
        .unwrap();
        let c = s.to_config().unwrap();
        assert_eq!((c.probes.interval_ms, c.probes.misses), (0, 3));
    }

    #[test]
    fn bad_settings_name_the_flag_and_variable() {
        let e = settings(&[("LIQONET_LOCAL_NETWORKS", "10.244.0.1/16")]).unwrap_err();
        assert!(
            e.contains("--local-networks") && e.contains("10.244.0.1/16"),
            "{e}"
        );
        let e = settings(&[("LIQONET_MTU", "20")])
            .unwrap()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cluster-id (LIQONET_CLUSTER_ID)"), "{e}");
        assert!(e.contains("--mtu (LIQONET_MTU)") && e.contains("20"), "{e}");
        let e = settings(&[
            ("LIQONET_CLUSTER_ID", "home"),
            ("LIQONET_PROBE_INTERVAL", "50ms"),
            ("LIQONET_PROBE_MISSES", "0"),
            ("LIQONET_REALTIME_PRIORITY", "100"),
        ])
        .unwrap()
        .to_config()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--probe-interval (LIQONET_PROBE_INTERVAL) (in ms)") && e.contains("50 "),
            "{e}"
        );
        assert!(e.contains("--probe-misses (LIQONET_PROBE_MISSES)"), "{e}");
        assert!(
            e.contains("--realtime-priority (LIQONET_REALTIME_PRIORITY)") && e.contains("100 "),
            "{e}"
        );
        let e = settings(&[("LIQONET_RETRY_PERIOD", "soon")]).unwrap_err();
        assert!(e.contains("--retry-period") && e.contains("soon"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
