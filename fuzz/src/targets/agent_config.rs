//! Route agent config files built from the real schema with hostile values, through
//! `AgentConfig::from_yaml` (parse and validate). No panic; every error names a field path of the
//! schema or the document; an accepted config gives every node an overlay address and survives a
//! round trip through serialization unchanged.

use liqonet_proto::agent::AgentConfig;

use crate::driver::pct;
use crate::rng::Rng;
use crate::targets::gateway_config::{check_errors, cluster_id, is_shape_error, text};
use crate::targets::Target;
use crate::yaml::{self, cidr_text, quoted, s, seq, Hostility, MapBuilder, Node};

const FIELDS: &[&str] = &[
    "nodeName",
    "mode",
    "gatewayNode",
    "remoteNetworks",
    "nodes",
    "name",
    "ip",
    "podCIDR",
    "ip6",
    "podCIDR6",
    "table",
    "rulePriority",
    "vxlan",
    "device",
    "vni",
    "port",
    "mtu",
    "overlayCIDR",
    "overlayCidr",
    "overlayCIDR6",
    "reconcileSeconds",
];

#[derive(Default)]
pub struct AgentConfigTarget {
    inputs: u64,
    bytes: u64,
    not_utf8: u64,
    accepted: u64,
    shape_errors: u64,
}

fn u32_bad(rng: &mut Rng) -> Node {
    s(*rng.pick(&[
        "-1",
        "4294967296",
        "99999999999999999999",
        "1.0",
        "\"10\"",
        "~",
        "[]",
        "0x",
        "1e10",
    ]))
}

fn node(rng: &mut Rng, h: Hostility, i: usize) -> Node {
    let mut m = MapBuilder::new(rng, h);
    m.field(
        "name",
        true,
        |r| s(quoted(r, &format!("n{i}"))),
        |r| cluster_id(r, false),
    )
    .field(
        "ip",
        true,
        |_| s(format!("172.20.0.{}", 10 + i)),
        |r| {
            s(*r.pick(&[
                "172.20.0.256",
                "'fd00::1'",
                "172.20.0",
                "\"\"",
                "172.20.0.10/24",
                "0.0.0.0",
                "172.20.0.10",
                "'::ffff:172.20.0.10'",
            ]))
        },
    )
    .field(
        "podCIDR",
        true,
        |r| s(cidr_text(r, Some(format!("10.244.{i}.0/24")))),
        |r| {
            if r.bool() {
                s(cidr_text(r, None))
            } else {
                s(*r.pick(&["'fd00:244::/64'", "10.244.0.0/16", "10.245.0.0/16"]))
            }
        },
    )
    .field(
        "ip6",
        false,
        |_| s(format!("'fd00::{:x}'", 10 + i)),
        |r| s(*r.pick(&["10.0.0.1", "'fd00::/64'", "'fe80::1%eth0'"])),
    )
    .field(
        "podCIDR6",
        false,
        |r| s(cidr_text(r, Some(format!("fd10:244:{i:x}::/64")))),
        |r| s(cidr_text(r, None)),
    );
    m.build()
}

pub fn document(rng: &mut Rng) -> Node {
    let h = Hostility::random(rng);
    let nodes = rng.range(1, 4);
    let me = rng.below(nodes);
    let gw = rng.below(nodes);
    let mut m = MapBuilder::new(rng, h);
    m.field(
        "nodeName",
        true,
        |_| s(format!("n{me}")),
        |r| cluster_id(r, false),
    )
    .field(
        "mode",
        false,
        |r| s(*r.pick(&["direct", "vxlan"])),
        |r| s(*r.pick(&["bgp", "Direct", "\"\"", "1"])),
    )
    .field(
        "gatewayNode",
        true,
        |_| s(format!("n{gw}")),
        |r| s(quoted(r, "nX")),
    )
    .field(
        "remoteNetworks",
        false,
        |r| s(*r.pick(&["[10.245.0.0/16]", "[10.245.0.0/16, 'fd00:245::/64']", "[]"])),
        |r| {
            let n = r.range(1, 3);
            seq(r, h, n, |r, _| s(cidr_text(r, None)))
        },
    )
    .field(
        "nodes",
        true,
        |r| seq(r, h, nodes, |r, i| node(r, h, i)),
        |r| {
            let d = yaml::depth(r);
            yaml::deep(r, d)
        },
    )
    .field(
        "table",
        false,
        |r| s(*r.pick(&["2741", "1", "252", "4294967295"])),
        |r| {
            if r.bool() {
                s(*r.pick(&["0", "253", "254", "255"]))
            } else {
                u32_bad(r)
            }
        },
    )
    .field(
        "rulePriority",
        false,
        |r| s(*r.pick(&["2741", "1", "32765"])),
        |r| {
            if r.bool() {
                s(*r.pick(&["0", "32766", "32767", "4294967295"]))
            } else {
                u32_bad(r)
            }
        },
    )
    .field(
        "vxlan",
        false,
        |r| {
            // Both spellings of the overlay key (the old one is an alias).
            let overlay = if r.chance(1, 4) {
                "overlayCidr"
            } else {
                "overlayCIDR"
            };
            let mut v = MapBuilder::new(r, h);
            v.field(
                "device",
                false,
                |_| s("liqo.vxlan"),
                |r| s(*r.pick(&["\"\"", "a/b", "abcdefghijklmnop", "'a b'", "a:b"])),
            )
            .field(
                "vni",
                false,
                |r| s(*r.pick(&["2741", "1", "16777215"])),
                |r| s(*r.pick(&["0", "16777216", "-5"])),
            )
            .field(
                "port",
                false,
                |r| s(*r.pick(&["4789", "1", "65535"])),
                |r| s(*r.pick(&["0", "65536"])),
            )
            .field(
                "mtu",
                false,
                |r| s(*r.pick(&["1450", "576", "9000"])),
                |r| s(*r.pick(&["575", "9001", "0"])),
            )
            .field(
                overlay,
                false,
                |r| {
                    let c = *r.pick(&[
                        "10.80.0.0/12",
                        "10.64.0.0/12",
                        "10.0.0.0/8",
                        "100.64.0.0/24",
                    ]);
                    s(cidr_text(r, Some(c.into())))
                },
                |r| {
                    if r.bool() {
                        s(cidr_text(r, None))
                    } else {
                        s(*r.pick(&["'fd00::/64'", "0.0.0.0/0", "10.80.0.0/32", "10.80.0.0/31"]))
                    }
                },
            )
            .field(
                "overlayCIDR6",
                false,
                |r| {
                    let c = *r.pick(&["fdff:2741::/96", "fd00::/112", "fd00::1/128"]);
                    s(cidr_text(r, Some(c.into())))
                },
                |r| s(*r.pick(&["'fd00::/64'", "10.0.0.0/8", "'::/0'", "'fd00::/95'"])),
            );
            v.build()
        },
        |r| yaml::hostile_node(r, 0),
    )
    .field(
        "reconcileSeconds",
        false,
        |r| s(*r.pick(&["10", "1", "4294967295"])),
        |r| {
            if r.bool() {
                s("0")
            } else {
                u32_bad(r)
            }
        },
    );
    m.build()
}

impl Target for AgentConfigTarget {
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
        let config = match AgentConfig::from_yaml(text) {
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
        for n in &config.nodes {
            let v4 = config.overlay_ip(n);
            let v6 = config.overlay_ip6(n);
            if !config.vxlan.overlay_cidr.contains(v4.into()) {
                return Err(format!(
                    "overlay address {v4} of {} is outside vxlan.overlayCIDR",
                    n.name
                ));
            }
            if !config.vxlan.overlay_cidr6.contains(v6.into()) {
                return Err(format!(
                    "overlay address {v6} of {} is outside vxlan.overlayCIDR6",
                    n.name
                ));
            }
        }
        let written = serde_yaml::to_string(&config).map_err(|e| format!("serialize: {e}"))?;
        let back = AgentConfig::from_yaml(&written)
            .map_err(|e| format!("a serialized accepted config is refused: {e}\n{written}"))?;
        if back != config {
            return Err(format!("round trip changed the config:\n{written}"));
        }
        Ok(())
    }

    fn coverage(&self) -> String {
        let n = self.inputs;
        let refused = n - self.accepted - self.not_utf8;
        format!(
            "{} bytes a document on average; accepted {}, refused {} (by shape ≈{}, by validation ≈{}), not UTF-8 {}",
            self.bytes / n.max(1),
            pct(self.accepted, n),
            pct(refused, n),
            pct(self.shape_errors, n),
            pct(refused.saturating_sub(self.shape_errors), n),
            pct(self.not_utf8, n),
        )
    }
}
