//! Gateway config files built from the real schema with hostile values, through
//! `GatewayConfig::from_yaml` (parse and validate). No panic; every error names a field path of
//! the schema or the document. An accepted config also resolves its `auto` networks (twice, the
//! second time from the first's state, which must change nothing) and survives a round trip
//! through serialization.

use liqonet_proto::config::{ConfigErrors, GatewayConfig};
use liqonet_proto::ipam::IpamState;

use crate::driver::pct;
use crate::rng::Rng;
use crate::targets::Target;
use crate::yaml::{self, cidr_text, key_text, quoted, s, seq, Hostility, MapBuilder, Node};

/// Every field name of the gateway config schema.
const FIELDS: &[&str] = &[
    "clusterID",
    "interface",
    "listenPort",
    "privateKeyFile",
    "mtu",
    "localNetworks",
    "interfaceAddresses",
    "metricsAddress",
    "peers",
    "publicKey",
    "endpoint",
    "persistentKeepalive",
    "networks",
    "cidr",
    "remapped",
    "ipam",
    "pools",
    "reserved",
    "offload",
];

#[derive(Default)]
pub struct GatewayConfigTarget {
    inputs: u64,
    bytes: u64,
    not_utf8: u64,
    accepted: u64,
    shape_errors: u64,
    auto_resolved: u64,
    auto_refused: u64,
}

pub fn cluster_id(rng: &mut Rng, good: bool) -> Node {
    if good {
        let id = *rng.pick(&["home", "foreign", "c1", "a-b-c", "x0"]);
        return s(quoted(rng, id));
    }
    s(match rng.below(8) {
        0 => "Home".to_string(),
        1 => "-home".into(),
        2 => "home-".into(),
        3 => "a".repeat(64),
        4 => "\"\"".into(),
        5 => "hömé".into(),
        6 => "\"ho\\u0000me\"".into(),
        _ => "ho_me".into(),
    })
}

fn int(rng: &mut Rng, good: &[&str]) -> Node {
    s(*rng.pick(good))
}

fn bad_int(rng: &mut Rng) -> Node {
    s(*rng.pick(&[
        "0",
        "-1",
        "65536",
        "4294967296",
        "99999999999999999999",
        "1.5",
        "\"51840\"",
        "0x10",
        "1e3",
        "~",
        "true",
        "[]",
        "{}",
    ]))
}

fn network(rng: &mut Rng, h: Hostility, k: usize) -> Node {
    let v4 = rng.chance(3, 4);
    let (cidr, remapped) = if v4 {
        match rng.below(3) {
            0 => (
                "10.244.0.0/16".to_string(),
                Some(format!("10.{}.0.0/16", 100 + k)),
            ),
            1 => (format!("10.{}.0.0/16", 100 + k), None),
            _ => ("10.244.0.0/16".to_string(), Some("auto".to_string())),
        }
    } else {
        match rng.below(2) {
            0 => (
                "fd00:244::/64".to_string(),
                Some(format!("fd00:{:x}::/64", 0x300 + k)),
            ),
            _ => ("fd00:244::/64".to_string(), Some("auto".to_string())),
        }
    };
    let mut m = MapBuilder::new(rng, h);
    m.field(
        "cidr",
        true,
        |r| s(cidr_text(r, Some(cidr.clone()))),
        |r| s(cidr_text(r, None)),
    );
    if let Some(remapped) = remapped {
        m.field(
            "remapped",
            true,
            |r| s(cidr_text(r, Some(remapped.clone()))),
            |r| s(cidr_text(r, None)),
        );
    }
    m.build()
}

fn peer(rng: &mut Rng, h: Hostility, i: usize) -> Node {
    let name = format!("peer-{i}");
    let mut m = MapBuilder::new(rng, h);
    m.field(
        "clusterID",
        true,
        |r| s(quoted(r, &name)),
        |r| cluster_id(r, false),
    )
    .field(
        "publicKey",
        true,
        |r| s(key_text(r, true)),
        |r| s(key_text(r, false)),
    )
    .field(
        "endpoint",
        false,
        |r| {
            s(*r.pick(&[
                "192.0.2.2:51840",
                "'[fd00::2]:51840'",
                "gw.example.com:443",
                "localhost:1",
            ]))
        },
        |r| {
            s(*r.pick(&[
                "192.0.2.2",
                "192.0.2.2:0",
                "192.0.2.2:65536",
                "'[fd00::2]'",
                "fd00::2:51840",
                "\"host name:1\"",
                "a..b:1",
                ":1",
                "'[fe80::1%eth0]:1'",
            ]))
            .into_host_too_long(r)
        },
    )
    .field(
        "persistentKeepalive",
        false,
        |r| int(r, &["0", "25", "65535"]),
        bad_int,
    );
    let h2 = m.h;
    let n = m.rng.range(1, 3);
    m.field(
        "networks",
        true,
        |r| seq(r, h2, n, |r, j| network(r, h2, i * 4 + j)),
        |r| {
            if r.bool() {
                s("[]")
            } else {
                {
                    let d = yaml::depth(r);
                    yaml::deep(r, d)
                }
            }
        },
    );
    m.build()
}

trait HostTooLong {
    fn into_host_too_long(self, rng: &mut Rng) -> Node;
}

impl HostTooLong for Node {
    /// Now and then a host name longer than DNS allows instead.
    fn into_host_too_long(self, rng: &mut Rng) -> Node {
        if rng.chance(1, 4) {
            s(format!("{}:80", "a".repeat(rng.range(250, 2000))))
        } else {
            self
        }
    }
}

/// A whole gateway config document.
pub fn document(rng: &mut Rng) -> Node {
    let h = Hostility::random(rng);
    let peers = rng.below(4);
    let mut m = MapBuilder::new(rng, h);
    m.field("clusterID", true, |_| s("home"), |r| cluster_id(r, false))
        .field(
            "interface",
            false,
            |r| s(quoted(r, "liqo0")),
            |r| {
                s(*r.pick(&[
                    "\"\"",
                    "a/b",
                    "eth0:1",
                    "abcdefghijklmnop",
                    "..",
                    "'a b'",
                    "\"\\t\"",
                ]))
            },
        )
        .field(
            "listenPort",
            false,
            |r| int(r, &["51840", "1", "65535"]),
            bad_int,
        )
        .field(
            "privateKeyFile",
            true,
            |r| s(quoted(r, "home.key")),
            |r| s(*r.pick(&["\"\"", "/dev/zero", "\"\\0\"", "~"])),
        )
        .field(
            "mtu",
            false,
            |r| int(r, &["1420", "576", "9000"]),
            |r| {
                if r.bool() {
                    int(r, &["575", "9001", "0", "65535"])
                } else {
                    bad_int(r)
                }
            },
        )
        .field(
            "localNetworks",
            false,
            |r| {
                s(*r.pick(&[
                    "[10.244.0.0/16]",
                    "[10.244.0.0/16, 10.96.0.0/12]",
                    "['fd00:244::/64']",
                    "[]",
                ]))
            },
            |r| {
                let n = r.range(1, 3);
                seq(r, h, n, |r, _| s(cidr_text(r, None)))
            },
        )
        .field(
            "interfaceAddresses",
            false,
            |r| s(*r.pick(&["[10.244.0.1/32]", "[]"])),
            |r| {
                s(*r.pick(&[
                    "[10.244.0.1/24]",
                    "[10.9.0.1/32]",
                    "['fd00:244::1/128']",
                    "[10.244.0.1]",
                ]))
            },
        )
        .field(
            "metricsAddress",
            false,
            |r| s(*r.pick(&["127.0.0.1:9090", "'[::1]:9090'", "0.0.0.0:0"])),
            |r| {
                s(*r.pick(&[
                    "localhost:9090",
                    "127.0.0.1",
                    "127.0.0.1:99999",
                    "\"\"",
                    "9090",
                ]))
            },
        )
        .field(
            "peers",
            false,
            |r| seq(r, h, peers, |r, i| peer(r, h, i)),
            |r| {
                let d = yaml::depth(r);
                yaml::deep(r, d)
            },
        )
        .field(
            "ipam",
            false,
            |r| {
                let mut im = MapBuilder::new(r, h);
                im.field(
                    "pools",
                    false,
                    |r| {
                        s(*r.pick(&[
                            "[10.0.0.0/8]",
                            "[10.250.0.0/16, 'fd00::/8']",
                            "[10.250.0.0/16]",
                        ]))
                    },
                    |r| {
                        s(*r.pick(&[
                            "[0.0.0.0/0, '::/0']",
                            "[10.250.0.0/24]",
                            "[]",
                            "['10.250.0.1/16']",
                        ]))
                    },
                )
                .field(
                    "reserved",
                    false,
                    |r| s(*r.pick(&["[10.250.0.0/17]", "[]"])),
                    |r| s(*r.pick(&["[0.0.0.0/0]", "['::/0', 10.0.0.0/8]"])),
                );
                im.build()
            },
            |r| yaml::hostile_node(r, 0),
        )
        .field(
            "offload",
            false,
            |r| s(*r.pick(&["true", "false"])),
            |r| s(*r.pick(&["yes", "1", "\"true\"", "True", "~"])),
        );
    m.build()
}

/// The document as text, maybe damaged, maybe not UTF-8 at all (the file reader would refuse
/// it; it is counted, not parsed).
pub fn text(rng: &mut Rng, root: &Node, out: &mut Vec<u8>) {
    let mut t = String::new();
    yaml::render(rng, root, &mut t);
    yaml::damage(rng, &mut t);
    out.extend_from_slice(t.as_bytes());
    if rng.chance(1, 200) && !out.is_empty() {
        let i = rng.below(out.len());
        out[i] = 0xff;
    }
}

/// An error from serde (the document's shape) rather than from validation (its meaning): serde
/// stops at its first error and words it its own way. A heuristic, for the coverage hint only.
pub fn is_shape_error(errs: &ConfigErrors) -> bool {
    let [e] = errs.0.as_slice() else {
        return false;
    };
    e.message.contains(" at line ")
        || [
            "missing field",
            "unknown field",
            "invalid type",
            "invalid value",
            "duplicate field",
            "unknown variant",
        ]
        .iter()
        .any(|p| e.message.starts_with(p))
}

/// Every error names a field path of the schema (or the document) and says something.
pub fn check_errors(errs: &ConfigErrors, fields: &[&str], what: &str) -> Result<(), String> {
    if errs.0.is_empty() {
        return Err(format!("{what}: an error without any entry"));
    }
    for e in &errs.0 {
        if !yaml::is_field_path(&e.path, &e.message, fields) {
            return Err(format!(
                "{what}: error path {:?} names no field ({})",
                e.path, e.message
            ));
        }
        if e.message.trim().is_empty() {
            return Err(format!("{what}: an error at {} without a message", e.path));
        }
    }
    Ok(())
}

impl Target for GatewayConfigTarget {
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let doc = document(rng);
        text(rng, &doc, out);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        self.inputs += 1;
        self.bytes += input.len() as u64;
        let Ok(text) = std::str::from_utf8(input) else {
            self.not_utf8 += 1;
            return Ok(());
        };
        let config = match GatewayConfig::from_yaml(text) {
            Ok(c) => c,
            Err(errs) => {
                if is_shape_error(&errs) {
                    self.shape_errors += 1;
                }
                return check_errors(&errs, FIELDS, "from_yaml");
            }
        };
        self.accepted += 1;
        config
            .validate()
            .map_err(|e| format!("from_yaml accepted what validate refuses: {e}"))?;
        match config.resolve_remapped(&IpamState::default()) {
            Ok((nets, state)) => {
                self.auto_resolved += 1;
                let (again, _) = config
                    .resolve_remapped(&state)
                    .map_err(|e| format!("resolving again from the state refused: {e}"))?;
                if again != nets {
                    return Err(format!(
                        "resolving again from the state changed the prefixes: {nets:?} → {again:?}"
                    ));
                }
            }
            Err(errs) => {
                self.auto_refused += 1;
                check_errors(&errs, FIELDS, "resolve_remapped")?;
            }
        }
        let written = serde_yaml::to_string(&config).map_err(|e| format!("serialize: {e}"))?;
        let back = GatewayConfig::from_yaml(&written)
            .map_err(|e| format!("a serialized accepted config is refused: {e}\n{written}"))?;
        let rewritten = serde_yaml::to_string(&back).map_err(|e| format!("serialize: {e}"))?;
        if rewritten != written {
            return Err(format!(
                "round trip changed the config:\n{written}---\n{rewritten}"
            ));
        }
        Ok(())
    }

    fn coverage(&self) -> String {
        let n = self.inputs;
        let refused = n - self.accepted - self.not_utf8;
        format!(
            "{} bytes a document on average; accepted {} (auto resolved {}, IPAM refused {}), refused {} (by shape ≈{}, by validation ≈{}), not UTF-8 {}",
            self.bytes / n.max(1),
            pct(self.accepted, n),
            pct(self.auto_resolved, n),
            pct(self.auto_refused, n),
            pct(refused, n),
            pct(self.shape_errors, n),
            pct(refused.saturating_sub(self.shape_errors), n),
            pct(self.not_utf8, n),
        )
    }
}
