//! Would the node's nftables input rules let a WireGuard datagram in? Evaluates `nft -j list
//! ruleset` for a UDP datagram to the listen port from an unknown source: every base chain on
//! the input hook is walked in order (jumps and gotos followed), each match judged as surely
//! true, surely false or unknown for such a packet.
//!
//! Every base chain on a hook sees the packet (an accept ends only its own chain), so each gets
//! its verdict. A surely matching drop is a failure; a drop behind a condition the packet's
//! fields cannot decide (source address, input interface, connection state) may drop; a chain
//! whose policy is drop fails unless a rule surely accepts.

use std::collections::HashMap;

use serde_json::Value;

/// The underlay family of the datagram (an `inet` chain sees both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// A base chain's verdict on the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by a rule that surely matches (`by`), or by the chain's accept policy.
    Accepted { by: Option<Place> },
    /// Rules behind conditions the datagram's fields cannot decide may drop it.
    MayDrop { at: Vec<Place> },
    /// A rule that surely matches drops or rejects it.
    Dropped { at: Place },
    /// The policy is drop and no rule surely accepts it.
    PolicyDrop,
}

/// A rule: family, table, chain, handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} handle {}",
            self.family, self.table, self.chain, self.handle
        )
    }
}

/// One base chain on the input hook and what it does to the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerdict {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The worst verdict over the underlay families the chain sees, and that family.
    pub verdict: Verdict,
    pub packet: Family,
}

/// Every base chain with hook `input` (families ip, ip6 and inet), judged for a UDP datagram to
/// `port` of each of `families`. Errors name what in the document is not as `nft -j` writes it.
pub fn evaluate(
    ruleset: &str,
    port: u16,
    families: &[Family],
) -> Result<Vec<ChainVerdict>, String> {
    let doc: Value =
        serde_json::from_str(ruleset).map_err(|e| format!("not JSON from nft -j: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array in nft -j's output")?;
    let rs = Ruleset::parse(items);
    let mut out = Vec::new();
    for chain in rs
        .chains
        .iter()
        .filter(|c| c.hook.as_deref() == Some("input"))
    {
        let seen: Vec<Family> = families
            .iter()
            .copied()
            .filter(|f| {
                matches!(
                    (chain.family.as_str(), f),
                    ("inet", _) | ("ip", Family::V4) | ("ip6", Family::V6)
                )
            })
            .collect();
        let mut worst: Option<(Verdict, Family)> = None;
        for family in seen {
            let v = rs.base_verdict(chain, &Packet { family, port });
            if worst.as_ref().is_none_or(|(w, _)| rank(&v) > rank(w)) {
                worst = Some((v, family));
            }
        }
        if let Some((verdict, packet)) = worst {
            out.push(ChainVerdict {
                family: chain.family.clone(),
                table: chain.table.clone(),
                chain: chain.name.clone(),
                verdict,
                packet,
            });
        }
    }
    Ok(out)
}

fn rank(v: &Verdict) -> u8 {
    match v {
        Verdict::Accepted { .. } => 0,
        Verdict::MayDrop { .. } => 1,
        Verdict::Dropped { .. } | Verdict::PolicyDrop => 2,
    }
}

/// The datagram: a UDP datagram to `port`, from an unknown source and interface.
struct Packet {
    family: Family,
    port: u16,
}

struct Chain {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    policy: Option<String>,
    rules: Vec<(u64, Vec<Value>)>,
}

/// The parts of the ruleset the walk needs: chains with their rules, named sets and maps.
struct Ruleset {
    chains: Vec<Chain>,
    /// (family, table, name) → elements.
    sets: HashMap<(String, String, String), Vec<Value>>,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

impl Ruleset {
    fn parse(items: &[Value]) -> Ruleset {
        let mut rs = Ruleset {
            chains: Vec::new(),
            sets: HashMap::new(),
        };
        for item in items {
            if let Some(c) = item.get("chain") {
                rs.chains.push(Chain {
                    family: text(c, "family"),
                    table: text(c, "table"),
                    name: text(c, "name"),
                    hook: c.get("hook").and_then(Value::as_str).map(str::to_string),
                    policy: c.get("policy").and_then(Value::as_str).map(str::to_string),
                    rules: Vec::new(),
                });
            }
            for kind in ["set", "map"] {
                if let Some(s) = item.get(kind) {
                    let elems = s
                        .get("elem")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    rs.sets.insert(
                        (text(s, "family"), text(s, "table"), text(s, "name")),
                        elems,
                    );
                }
            }
        }
        // Rules come after their chains in nft's output, but do not rely on it.
        for r in items.iter().filter_map(|i| i.get("rule")) {
            let (family, table, chain) = (text(r, "family"), text(r, "table"), text(r, "chain"));
            let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0);
            let expr = r
                .get("expr")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(c) = rs
                .chains
                .iter_mut()
                .find(|c| c.family == family && c.table == table && c.name == chain)
            {
                c.rules.push((handle, expr));
            }
        }
        rs
    }

    fn chain(&self, family: &str, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }

    fn base_verdict(&self, chain: &Chain, p: &Packet) -> Verdict {
        let mut maybe = Vec::new();
        match self.walk(chain, p, 0, &mut maybe) {
            End::Accept(at) if maybe.is_empty() => Verdict::Accepted { by: Some(at) },
            End::Drop(at) => Verdict::Dropped { at },
            End::Accept(_) => Verdict::MayDrop { at: maybe },
            End::Fallthrough if chain.policy.as_deref() == Some("drop") => Verdict::PolicyDrop,
            End::Fallthrough if maybe.is_empty() => Verdict::Accepted { by: None },
            End::Fallthrough => Verdict::MayDrop { at: maybe },
        }
    }

    /// Walks `chain` for `p`: the first surely matching terminal verdict, or the end (or a
    /// return). Drops behind unknown conditions go to `maybe`.
    fn walk(&self, chain: &Chain, p: &Packet, depth: usize, maybe: &mut Vec<Place>) -> End {
        // The kernel allows 16 nested jumps; more means a ruleset nft would not load.
        if depth > 16 {
            return End::Fallthrough;
        }
        for (handle, expr) in &chain.rules {
            let place = Place {
                family: chain.family.clone(),
                table: chain.table.clone(),
                chain: chain.name.clone(),
                handle: *handle,
            };
            let mut cond = Tri::True;
            for stmt in expr {
                match self.statement(chain, stmt, p) {
                    Stmt::Cond(t) => cond = cond.and(t),
                    Stmt::Neutral => {}
                    Stmt::Verdict(v) => {
                        if cond == Tri::False {
                            break;
                        }
                        let sure = cond == Tri::True;
                        match self.apply(chain, v, &place, p, depth, maybe) {
                            Some(End::Drop(at)) if !sure => maybe.push(at),
                            Some(End::Accept(_)) if !sure => {}
                            Some(End::Fallthrough) if !sure => {}
                            Some(end) => return end,
                            None => {}
                        }
                        break;
                    }
                }
            }
        }
        End::Fallthrough
    }

    /// What verdict `v` of the rule at `place` leads to; `None`: go on with the next rule.
    fn apply(
        &self,
        chain: &Chain,
        v: Jump,
        place: &Place,
        p: &Packet,
        depth: usize,
        maybe: &mut Vec<Place>,
    ) -> Option<End> {
        match v {
            Jump::Accept => Some(End::Accept(place.clone())),
            Jump::Drop => Some(End::Drop(place.clone())),
            Jump::Return => Some(End::Fallthrough),
            Jump::Continue => None,
            Jump::Call { target, goto } => {
                let callee = self.chain(&chain.family, &chain.table, &target)?;
                match self.walk(callee, p, depth + 1, maybe) {
                    // A goto does not come back here: the caller's caller goes on.
                    End::Fallthrough if goto => Some(End::Fallthrough),
                    End::Fallthrough => None,
                    end => Some(end),
                }
            }
            Jump::Maybe(vs) => {
                // A verdict map whose key is unknown: any of its verdicts may apply.
                for v in vs {
                    if let Some(End::Drop(at)) = self.apply(chain, v, place, p, depth, maybe) {
                        maybe.push(at);
                    }
                }
                None
            }
        }
    }

    fn statement(&self, chain: &Chain, stmt: &Value, p: &Packet) -> Stmt {
        let Some((kind, body)) = stmt.as_object().and_then(|o| o.iter().next()) else {
            return Stmt::Cond(Tri::Unknown);
        };
        match kind.as_str() {
            "match" => Stmt::Cond(self.matches(chain, body, p)),
            "accept" => Stmt::Verdict(Jump::Accept),
            "drop" | "reject" => Stmt::Verdict(Jump::Drop),
            "return" => Stmt::Verdict(Jump::Return),
            "continue" => Stmt::Verdict(Jump::Continue),
            "jump" | "goto" => match body.get("target").and_then(Value::as_str) {
                Some(t) => Stmt::Verdict(Jump::Call {
                    target: t.to_string(),
                    goto: kind == "goto",
                }),
                None => Stmt::Cond(Tri::Unknown),
            },
            // Userspace decides: it may drop.
            "queue" => Stmt::Verdict(Jump::Maybe(vec![Jump::Drop])),
            "vmap" => self.vmap(chain, body, p),
            // iptables-nft's translations of iptables targets.
            "xt" if text(body, "type") == "target" => match text(body, "name").as_str() {
                "DROP" | "REJECT" => Stmt::Verdict(Jump::Drop),
                "ACCEPT" => Stmt::Verdict(Jump::Accept),
                _ => Stmt::Neutral,
            },
            // Statements that count, log or change the packet without deciding its fate.
            "counter" | "log" | "mangle" | "notrack" | "ct helper" | "ct timeout"
            | "ct expectation" | "dnat" | "snat" | "masquerade" | "redirect" | "tproxy" | "set"
            | "dup" | "fwd" | "synproxy" => Stmt::Neutral,
            // Rate limits, quotas and anything else: a condition we cannot decide.
            _ => Stmt::Cond(Tri::Unknown),
        }
    }

    fn matches(&self, chain: &Chain, m: &Value, p: &Packet) -> Tri {
        let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            return Tri::Unknown;
        };
        let field = field(left, p);
        let vals = match field {
            Field::Absent => return Tri::False,
            Field::Any => return Tri::Unknown,
            Field::AnyBut(except) => {
                return match (op, right.as_str()) {
                    ("==", Some(r)) if except.contains(&r) => Tri::False,
                    ("!=", Some(r)) if except.contains(&r) => Tri::True,
                    _ => Tri::Unknown,
                };
            }
            Field::OneOf(vals) => vals,
        };
        // The packet's field has one of `vals` (which one is unknown): the match is sure only
        // when all agree.
        let mut result: Option<Tri> = None;
        for v in &vals {
            let t = match self.compare(chain, op, v, right) {
                Some(true) => Tri::True,
                Some(false) => Tri::False,
                None => Tri::Unknown,
            };
            result = Some(match result {
                None => t,
                Some(r) if r == t => r,
                Some(_) => Tri::Unknown,
            });
        }
        result.unwrap_or(Tri::Unknown)
    }

    fn compare(&self, chain: &Chain, op: &str, v: &Val, right: &Value) -> Option<bool> {
        match op {
            "==" | "in" => self.member(chain, v, right),
            "!=" => self.member(chain, v, right).map(|b| !b),
            "<" | ">" | "<=" | ">=" => {
                let (a, b) = (v.num?, number(right)?);
                Some(match op {
                    "<" => a < b,
                    ">" => a > b,
                    "<=" => a <= b,
                    _ => a >= b,
                })
            }
            _ => None,
        }
    }

    /// Whether `v` equals `right` or is an element of it (a list, an anonymous or named set).
    fn member(&self, chain: &Chain, v: &Val, right: &Value) -> Option<bool> {
        match right {
            Value::Array(elems) => any_of(elems.iter().map(|e| self.member(chain, v, e))),
            Value::Object(o) if o.contains_key("set") => match o.get("set") {
                Some(Value::Array(elems)) => any_of(elems.iter().map(|e| self.member(chain, v, e))),
                Some(single) => self.member(chain, v, single),
                None => None,
            },
            Value::Object(o) if o.contains_key("range") => {
                let r = o.get("range")?.as_array()?;
                let (lo, hi) = (number(r.first()?)?, number(r.get(1)?)?);
                Some((lo..=hi).contains(&v.num?))
            }
            Value::Object(o) if o.contains_key("elem") => {
                self.member(chain, v, o.get("elem")?.get("val")?)
            }
            Value::String(s) if s.starts_with('@') => {
                let elems = self.sets.get(&(
                    chain.family.clone(),
                    chain.table.clone(),
                    s[1..].to_string(),
                ))?;
                any_of(elems.iter().map(|e| self.member(chain, v, e)))
            }
            Value::String(s) => {
                if v.names.iter().any(|n| n.eq_ignore_ascii_case(s)) {
                    return Some(true);
                }
                match (s.parse::<u64>(), v.num) {
                    (Ok(n), Some(num)) => Some(n == num),
                    // A name for a value we know only by number (a port's service name).
                    (Err(_), _) if v.names.is_empty() => None,
                    (Err(_), _) => Some(false),
                    (Ok(_), None) => None,
                }
            }
            Value::Number(_) => Some(number(right)? == v.num?),
            // Prefixes, concatenations and the like hold addresses and tuples we do not know.
            _ => None,
        }
    }

    /// `KEY vmap { VALUE : VERDICT, ... }`, anonymous or named.
    fn vmap(&self, chain: &Chain, body: &Value, p: &Packet) -> Stmt {
        let Some(key) = body.get("key") else {
            return Stmt::Cond(Tri::Unknown);
        };
        let elems: Vec<Value> = match body.get("data") {
            Some(Value::String(s)) if s.starts_with('@') => self
                .sets
                .get(&(
                    chain.family.clone(),
                    chain.table.clone(),
                    s[1..].to_string(),
                ))
                .cloned()
                .unwrap_or_default(),
            Some(d) => match d.get("set") {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let mut sure: Option<Jump> = None;
        let mut possible = Vec::new();
        for e in &elems {
            let Some([k, verdict]) = e.as_array().map(Vec::as_slice) else {
                continue;
            };
            let m = serde_json::json!({"op": "==", "left": key, "right": k});
            let Stmt::Verdict(j) = self.statement(chain, verdict, p) else {
                continue;
            };
            match self.matches(chain, &m, p) {
                Tri::True if sure.is_none() => sure = Some(j),
                Tri::Unknown => possible.push(j),
                _ => {}
            }
        }
        match sure {
            // Elements are distinct keys: the one that matches is the verdict.
            Some(j) => Stmt::Verdict(j),
            None if possible.is_empty() => Stmt::Neutral,
            None => Stmt::Verdict(Jump::Maybe(possible)),
        }
    }
}

fn any_of(results: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for r in results {
        match r {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    (!unknown).then_some(false)
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::False, _) | (_, Tri::False) => Tri::False,
            (Tri::True, Tri::True) => Tri::True,
            _ => Tri::Unknown,
        }
    }
}

enum Stmt {
    Cond(Tri),
    Neutral,
    Verdict(Jump),
}

#[derive(Debug, Clone)]
enum Jump {
    Accept,
    Drop,
    Return,
    Continue,
    Call {
        target: String,
        goto: bool,
    },
    /// One of these, depending on what we cannot know.
    Maybe(Vec<Jump>),
}

enum End {
    Accept(Place),
    Drop(Place),
    Fallthrough,
}

/// A value of a packet field, by number and by the names nft may write for it.
struct Val {
    num: Option<u64>,
    names: Vec<&'static str>,
}

fn val(num: u64, names: &[&'static str]) -> Val {
    Val {
        num: Some(num),
        names: names.to_vec(),
    }
}

enum Field {
    /// The packet has no such field (a TCP port of a UDP datagram): the match fails.
    Absent,
    /// One of these values.
    OneOf(Vec<Val>),
    /// Anything but these names (an interface other than `lo`).
    AnyBut(Vec<&'static str>),
    Any,
}

/// What the datagram's field `left` holds.
fn field(left: &Value, p: &Packet) -> Field {
    let udp = || Field::OneOf(vec![val(17, &["udp"])]);
    let v4 = p.family == Family::V4;
    if let Some(meta) = left.get("meta") {
        return match text(meta, "key").as_str() {
            "l4proto" => udp(),
            "nfproto" if v4 => Field::OneOf(vec![val(2, &["ipv4"])]),
            "nfproto" => Field::OneOf(vec![val(10, &["ipv6"])]),
            "protocol" if v4 => Field::OneOf(vec![val(0x0800, &["ip"])]),
            "protocol" => Field::OneOf(vec![val(0x86dd, &["ip6"])]),
            // From an unknown source, not from the node itself.
            "iifname" | "iif" => Field::AnyBut(vec!["lo"]),
            "iiftype" => Field::AnyBut(vec!["loopback"]),
            _ => Field::Any,
        };
    }
    if let Some(ct) = left.get("ct") {
        return match text(ct, "key").as_str() {
            // A well-formed datagram is new (the first from a peer) or part of a flow, never
            // invalid or untracked.
            "state" => Field::OneOf(vec![
                val(8, &["new"]),
                val(2, &["established"]),
                val(4, &["related"]),
            ]),
            _ => Field::Any,
        };
    }
    if let Some(pl) = left.get("payload") {
        let (proto, name) = (text(pl, "protocol"), text(pl, "field"));
        return match (proto.as_str(), name.as_str()) {
            ("udp" | "th", "dport") => Field::OneOf(vec![val(u64::from(p.port), &[])]),
            ("udp" | "th", _) => Field::Any,
            ("ip", _) if !v4 => Field::Absent,
            ("ip6", _) if v4 => Field::Absent,
            ("ip", "protocol") | ("ip6", "nexthdr") => udp(),
            ("ip" | "ip6" | "ether" | "vlan", _) => Field::Any,
            // Another transport's header (tcp, sctp, icmp…) or an unnamed raw offset.
            ("", _) => Field::Any,
            _ => Field::Absent,
        };
    }
    Field::Any
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples written by `nft -j list ruleset` (nftables 1.0.6) in a scratch namespace.
    fn sample(name: &str) -> &'static str {
        match name {
            "simple_drop" => include_str!("testdata/simple_drop.json"),
            "policy_drop" => include_str!("testdata/policy_drop.json"),
            "policy_drop_accepted" => include_str!("testdata/policy_drop_accepted.json"),
            "may_drop" => include_str!("testdata/may_drop.json"),
            "jump_sub" => include_str!("testdata/jump_sub.json"),
            "vmap_named" => include_str!("testdata/vmap_named.json"),
            "mixed" => include_str!("testdata/mixed.json"),
            _ => panic!("no sample {name}"),
        }
    }

    fn at(family: &str, table: &str, chain: &str, handle: u64) -> Place {
        Place {
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
            handle,
        }
    }

    /// The verdicts of every input chain, as (table chain, verdict).
    fn verdicts(name: &str, port: u16, families: &[Family]) -> Vec<(String, Verdict)> {
        evaluate(sample(name), port, families)
            .unwrap()
            .into_iter()
            .map(|c| (format!("{} {}", c.table, c.chain), c.verdict))
            .collect()
    }

    const V4: &[Family] = &[Family::V4];
    const BOTH: &[Family] = &[Family::V4, Family::V6];

    #[test]
    fn a_drop_of_the_port_fails_and_names_its_rule() {
        let v = verdicts("simple_drop", 51840, BOTH);
        assert_eq!(
            v,
            [(
                "diagtest input".into(),
                Verdict::Dropped {
                    at: at("inet", "diagtest", "input", 2)
                }
            )]
        );
        // Another port passes the same chain.
        assert_eq!(
            verdicts("simple_drop", 51841, BOTH)[0].1,
            Verdict::Accepted { by: None }
        );
    }

    #[test]
    fn a_drop_policy_fails_unless_a_rule_surely_accepts() {
        // established/related and lo accepts do not let a new peer's first datagram in;
        // `ct state invalid drop` never applies to it.
        assert_eq!(verdicts("policy_drop", 51840, V4)[0].1, Verdict::PolicyDrop);
        assert_eq!(
            verdicts("policy_drop_accepted", 51840, V4)[0].1,
            Verdict::Accepted {
                by: Some(at("ip", "fw", "input", 4))
            }
        );
        assert_eq!(
            verdicts("policy_drop_accepted", 51841, V4)[0].1,
            Verdict::PolicyDrop
        );
    }

    #[test]
    fn a_drop_behind_an_unknown_source_may_drop() {
        let v = evaluate(sample("may_drop"), 51840, BOTH).unwrap();
        assert_eq!(
            v[0].verdict,
            Verdict::MayDrop {
                at: vec![at("inet", "fw", "input", 3)]
            }
        );
        // `ip saddr` does not concern an IPv6 datagram: only IPv4 may be dropped.
        assert_eq!(v[0].packet, Family::V4);
        assert_eq!(
            verdicts("may_drop", 51840, &[Family::V6])[0].1,
            Verdict::Accepted {
                by: Some(at("inet", "fw", "input", 4))
            }
        );
    }

    #[test]
    fn jumps_returns_and_ranges_are_followed() {
        assert_eq!(
            verdicts("jump_sub", 51840, V4)[0].1,
            Verdict::Accepted { by: None }
        );
        assert_eq!(
            verdicts("jump_sub", 51000, V4)[0].1,
            Verdict::Dropped {
                at: at("inet", "fw", "udpchk", 4)
            }
        );
        assert_eq!(
            verdicts("jump_sub", 40000, V4)[0].1,
            Verdict::Accepted { by: None }
        );
    }

    #[test]
    fn verdict_maps_are_looked_up() {
        let drop = Verdict::Dropped {
            at: at("inet", "fw", "input", 3),
        };
        assert_eq!(verdicts("vmap_named", 51840, V4)[0].1, drop);
        assert_eq!(
            verdicts("vmap_named", 22, V4)[0].1,
            Verdict::Accepted {
                by: Some(at("inet", "fw", "input", 3))
            }
        );
        assert_eq!(
            verdicts("vmap_named", 1000, V4)[0].1,
            Verdict::Accepted { by: None }
        );
    }

    #[test]
    fn a_mixed_ruleset_judges_each_input_chain_for_each_family() {
        // inet filter input: ct/lo/tcp rules do not decide; `ip saddr 10.0.0.0/8 udp dport
        // 51840 drop` may drop; `udp dport @allowed accept` accepts. ip6 t6 in6 drops IPv6.
        let v = verdicts("mixed", 51840, BOTH);
        assert_eq!(
            v,
            [
                (
                    "filter input".into(),
                    Verdict::MayDrop {
                        at: vec![at("inet", "filter", "input", 8)]
                    }
                ),
                (
                    "t6 in6".into(),
                    Verdict::Dropped {
                        at: at("ip6", "t6", "in6", 2)
                    }
                ),
            ]
        );
        // An IPv4-only underlay never meets the ip6 chain; the nat chain is not on input.
        assert_eq!(verdicts("mixed", 51840, V4).len(), 1);
        // Anonymous sets with ranges; `th dport != 53`; an anonymous verdict map.
        assert_eq!(
            verdicts("mixed", 4500, V4)[0].1,
            Verdict::Dropped {
                at: at("inet", "filter", "input", 11)
            }
        );
        assert_eq!(
            verdicts("mixed", 51000, V4)[0].1,
            Verdict::Accepted {
                by: Some(at("inet", "filter", "input", 12))
            }
        );
        assert_eq!(
            verdicts("mixed", 53, V4)[0].1,
            Verdict::Accepted {
                by: Some(at("inet", "filter", "input", 14))
            }
        );
    }

    #[test]
    fn rate_limits_other_protocols_and_empty_rulesets() {
        let doc = |exprs: &str| {
            format!(
                r#"{{"nftables": [{{"chain": {{"family": "ip", "table": "t", "name": "in", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}}}, {exprs}]}}"#
            )
        };
        let rule = |handle: u32, expr: &str| {
            format!(
                r#"{{"rule": {{"family": "ip", "table": "t", "chain": "in", "handle": {handle}, "expr": {expr}}}}}"#
            )
        };
        // A rate limit decides nothing we can know: may drop.
        let limited = doc(&rule(
            2,
            r#"[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"limit": {"rate": 10, "per": "second"}}, {"drop": null}]"#,
        ));
        assert_eq!(
            evaluate(&limited, 51840, V4).unwrap()[0].verdict,
            Verdict::MayDrop {
                at: vec![at("ip", "t", "in", 2)]
            }
        );
        // TCP and ICMP rules never match a UDP datagram, even negated.
        let tcp = doc(&[
            rule(2, r#"[{"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"drop": null}]"#),
            rule(3, r#"[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "icmp"]}}}, {"drop": null}]"#),
            rule(4, r#"[{"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"drop": null}]"#),
            rule(5, r#"[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"drop": null}]"#),
        ].join(", "));
        assert_eq!(
            evaluate(&tcp, 51840, V4).unwrap()[0].verdict,
            Verdict::Accepted { by: None }
        );
        assert!(evaluate(r#"{"nftables": []}"#, 51840, V4)
            .unwrap()
            .is_empty());
        assert!(evaluate("nope", 51840, V4)
            .unwrap_err()
            .contains("not JSON"));
        assert!(evaluate("{}", 51840, V4).unwrap_err().contains("nftables"));
    }
}
