//! YAML documents built from a schema, with hostile values: wrong types, huge numbers, odd CIDRs,
//! duplicate and unknown keys, deep nesting, unicode, control characters, very long strings,
//! anchors and aliases, tags; rendered in block or flow style, and now and then damaged as text.

use crate::rng::Rng;

pub enum Node {
    /// A scalar as written in the document (plain or quoted).
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

pub fn s(text: impl Into<String>) -> Node {
    Node::Scalar(text.into())
}

/// How hostile a document is: how often a field gets a bad value, a wrong type or goes missing.
#[derive(Clone, Copy)]
pub struct Hostility {
    /// Out of 100, per field.
    pub bad: usize,
}

impl Hostility {
    pub fn random(rng: &mut Rng) -> Self {
        Hostility {
            bad: *rng.pick(&[0, 0, 0, 3, 10, 30, 60]),
        }
    }
    pub fn hit(&self, rng: &mut Rng) -> bool {
        self.bad > 0 && rng.below(100) < self.bad
    }
}

/// A map built field by field: each field present, missing, duplicated or of the wrong type as
/// the hostility says; unknown fields now and then.
pub struct MapBuilder<'a> {
    pub rng: &'a mut Rng,
    pub h: Hostility,
    pub fields: Vec<(String, Node)>,
}

impl<'a> MapBuilder<'a> {
    pub fn new(rng: &'a mut Rng, h: Hostility) -> Self {
        MapBuilder {
            rng,
            h,
            fields: Vec::new(),
        }
    }

    /// A field: `good` builds a well-formed value, `bad` a wrong one of the right type.
    pub fn field(
        &mut self,
        name: &str,
        required: bool,
        good: impl FnOnce(&mut Rng) -> Node,
        bad: impl FnOnce(&mut Rng) -> Node,
    ) -> &mut Self {
        // Optional fields are left out some of the time anyway.
        if !required && self.rng.chance(1, 3) {
            return self;
        }
        let value = if self.h.hit(self.rng) {
            match self.rng.below(6) {
                0 => return self, // missing
                1 => hostile_node(self.rng, 0),
                _ => bad(self.rng),
            }
        } else {
            good(self.rng)
        };
        if self.h.hit(self.rng) && self.rng.chance(1, 3) {
            // The same key twice.
            let again = hostile_node(self.rng, 0);
            self.fields.push((name.to_string(), again));
        }
        self.fields.push((name.to_string(), value));
        self
    }

    pub fn build(&mut self) -> Node {
        if self.h.hit(self.rng) && self.rng.chance(1, 4) {
            let k = hostile_key(self.rng);
            let v = hostile_node(self.rng, 0);
            let at = self.rng.below(self.fields.len() + 1);
            self.fields.insert(at, (k, v));
        }
        if self.h.hit(self.rng) && self.rng.chance(1, 6) && self.fields.len() > 1 {
            // Field order does not matter to serde; shuffle a little anyway.
            let i = self.rng.below(self.fields.len());
            let j = self.rng.below(self.fields.len());
            self.fields.swap(i, j);
        }
        Node::Map(std::mem::take(&mut self.fields))
    }
}

/// A sequence of `n` good items, some replaced by hostile nodes per the hostility.
pub fn seq(
    rng: &mut Rng,
    h: Hostility,
    n: usize,
    mut item: impl FnMut(&mut Rng, usize) -> Node,
) -> Node {
    Node::Seq(
        (0..n)
            .map(|i| {
                if h.hit(rng) && rng.chance(1, 4) {
                    hostile_node(rng, 0)
                } else {
                    item(rng, i)
                }
            })
            .collect(),
    )
}

fn hostile_key(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "unknownField".into(),
        1 => "ClusterID".into(),
        2 => "\"clusterID \"".into(),
        3 => "? [a, b]\n".into(),
        4 => "\"\\u00e9t\\u00e9\"".into(),
        _ => format!("k{}", rng.u16()),
    }
}

/// A node of any shape and content: huge numbers, odd strings, nesting, tags and aliases.
pub fn hostile_node(rng: &mut Rng, level: usize) -> Node {
    match rng.below(12) {
        0 if level < 3 => Node::Seq(
            (0..rng.below(4))
                .map(|_| hostile_node(rng, level + 1))
                .collect(),
        ),
        1 if level < 3 => Node::Map(
            (0..rng.below(4))
                .map(|_| (hostile_key(rng), hostile_node(rng, level + 1)))
                .collect(),
        ),
        2 => {
            let d = depth(rng);
            deep(rng, d)
        }
        _ => s(hostile_scalar(rng)),
    }
}

/// A nesting depth: mostly a few levels, now and then a few hundred (the parser's cost grows
/// with the square of the depth, so those are kept rare).
pub fn depth(rng: &mut Rng) -> usize {
    if rng.chance(1, 64) {
        rng.range(100, 400)
    } else {
        rng.range(2, 40)
    }
}

/// A long string's length: mostly a few KB, now and then near 100 KB.
fn long(rng: &mut Rng) -> usize {
    if rng.chance(1, 32) {
        rng.range(10_000, 100_000)
    } else {
        rng.range(256, 2_000)
    }
}

/// Nesting `depth` levels deep, as flow or block collections.
pub fn deep(rng: &mut Rng, depth: usize) -> Node {
    let mut n = s(hostile_scalar(rng));
    let maps = rng.bool();
    for _ in 0..depth {
        n = if maps {
            Node::Map(vec![("a".into(), n)])
        } else {
            Node::Seq(vec![n])
        };
    }
    n
}

pub fn hostile_scalar(rng: &mut Rng) -> String {
    match rng.below(24) {
        0 => "~".into(),
        1 => "null".into(),
        2 => "\"\"".into(),
        3 => (*rng.pick(&["true", "false", "yes", "no", "on", "off", "True", "Y"])).into(),
        4 => (*rng.pick(&[
            "0",
            "-1",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "-9223372036854775808",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "0x10",
            "0o17",
            "1e3",
            "1.5",
            ".inf",
            "-.inf",
            ".nan",
            "1_000",
            "+5",
            "012",
        ]))
        .into(),
        5 => format!("{}", rng.next_u64()),
        6 => {
            let n = long(rng);
            if rng.bool() {
                format!("\"{}\"", "x".repeat(n))
            } else {
                "a".repeat(n)
            }
        }
        7 => format!("x{}", rng.u16()),
        8 => (*rng.pick(&[
            "\"\\u0000\"",
            "\"\\x01\\x7f\"",
            "\"a\\tb\\nc\"",
            "\"\\uD800\"",
            "\"\\U0010FFFF\"",
            "'\u{202e}evil'",
            "\"\u{feff}\"",
            "ünïcödé",
            "日本語",
            "\"\\e\\a\\b\"",
        ]))
        .into(),
        9 => (*rng.pick(&[
            "&a x",
            "*a",
            "&b [1, 2]",
            "*undefined",
            "<<: *a",
            "!!binary aGk=",
            "!!int 5",
            "!custom x",
            "!!str",
            "!!map {}",
            "!<tag:yaml.org,2002:str> x",
        ]))
        .into(),
        10 => (*rng.pick(&[
            "|\n  block\n  text",
            ">-\n  folded",
            "'it''s'",
            "\"unterminated",
            "'unterminated",
            "[unclosed",
            "{unclosed",
            "- item",
            ": colon",
            "# only a comment",
            "a: b",
            "%YAML 1.2",
            "---",
            "...",
        ]))
        .into(),
        11 => {
            // A control character written raw (YAML forbids most of them).
            let c = char::from(*rng.pick(&[0u8, 1, 7, 8, 0x0b, 0x0c, 0x1b, 0x7f]));
            format!("x{c}y")
        }
        12 => "\u{85}\u{2028}\u{2029}".into(),
        13 => (*rng.pick(&["10.0.0.0/8", "fd00::/8", "::/0", "0.0.0.0/0", "auto"])).into(),
        _ => format!("w{}", rng.u32()),
    }
}

/// A plain, single-quoted or double-quoted rendering of `text` (which is plain-safe).
pub fn quoted(rng: &mut Rng, text: &str) -> String {
    match rng.below(6) {
        0 => format!("'{text}'"),
        1 => format!("\"{text}\""),
        _ => text.to_string(),
    }
}

/// The document as text: block style with some flow-style subtrees.
pub fn render(rng: &mut Rng, root: &Node, out: &mut String) {
    if rng.chance(1, 30) {
        out.push('\u{feff}');
    }
    if rng.chance(1, 20) {
        out.push_str("---\n");
    }
    match root {
        Node::Map(_) | Node::Seq(_) if rng.chance(1, 12) => {
            flow(root, out);
            out.push('\n');
        }
        _ => block(rng, root, 0, out),
    }
    if rng.chance(1, 40) {
        let tail = *rng.pick(&[
            "---\n",
            "...\n",
            "---\nclusterID: again\n",
            "# trailing comment\n",
        ]);
        out.push_str(tail);
    }
}

fn pad(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn block(rng: &mut Rng, n: &Node, indent: usize, out: &mut String) {
    match n {
        Node::Scalar(v) => {
            pad(indent, out);
            out.push_str(v);
            out.push('\n');
        }
        Node::Seq(items) if items.is_empty() => {
            pad(indent, out);
            out.push_str("[]\n");
        }
        Node::Map(fields) if fields.is_empty() => {
            pad(indent, out);
            out.push_str("{}\n");
        }
        Node::Seq(items) => {
            for item in items {
                pad(indent, out);
                out.push('-');
                value(rng, item, indent, out);
            }
        }
        Node::Map(fields) => {
            for (k, v) in fields {
                pad(indent, out);
                out.push_str(k);
                out.push(':');
                value(rng, v, indent, out);
            }
        }
    }
}

/// The value after `key:` or `-`: inline when a scalar, flow or an empty collection; else on the
/// following lines, indented.
fn value(rng: &mut Rng, v: &Node, indent: usize, out: &mut String) {
    match v {
        Node::Scalar(text) => {
            out.push(' ');
            out.push_str(text);
            out.push('\n');
        }
        Node::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Node::Map(fields) if fields.is_empty() => out.push_str(" {}\n"),
        _ if rng.chance(1, 6) => {
            out.push(' ');
            flow(v, out);
            out.push('\n');
        }
        _ => {
            out.push('\n');
            block(rng, v, indent + 2, out);
        }
    }
}

fn flow(n: &Node, out: &mut String) {
    match n {
        Node::Scalar(v) => out.push_str(v),
        Node::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(item, out);
            }
            out.push(']');
        }
        Node::Map(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                flow(v, out);
            }
            out.push('}');
        }
    }
}

/// Damages the text itself now and then: a line dropped, repeated or cut, a tab for indentation,
/// a stray character.
pub fn damage(rng: &mut Rng, text: &mut String) {
    if !rng.chance(1, 10) || text.is_empty() {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    let i = rng
        .below(lines.len().max(1))
        .min(lines.len().saturating_sub(1));
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match rng.below(6) {
        0 if !out.is_empty() => {
            out.remove(i);
        }
        1 if !out.is_empty() => {
            let l = out[i].clone();
            out.insert(i, l);
        }
        2 if !out.is_empty() => {
            let l = &mut out[i];
            if let Some((cut, _)) = l.char_indices().nth(l.chars().count() / 2) {
                l.truncate(cut);
            }
        }
        3 if !out.is_empty() => {
            let l = &mut out[i];
            let trimmed = l.trim_start().to_string();
            *l = format!("\t{trimmed}");
        }
        _ => {
            let c = *rng.pick(&[
                '"', '\'', '[', '{', ':', '-', '&', '*', '!', '|', '>', '%', '@', '`', '\0',
                '\u{1}',
            ]);
            if !out.is_empty() {
                out[i].push(c);
            }
        }
    }
    *text = out.join("\n");
    text.push('\n');
}

/// Whether a `ConfigError` path names a field: `(top level)`/`(document)`, or `name[i].name…`
/// over the schema's field names, ending in `.?` for a key of that map that could not be read,
/// or in the unknown key the message names (any text at all). A bare `?` names nothing.
pub fn is_field_path(path: &str, message: &str, fields: &[&str]) -> bool {
    if path == "(top level)" || path == "(document)" {
        return true;
    }
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once("`, expected").or_else(|| m.split_once('`')))
        .map(|(key, _)| key);
    let known = match unknown.and_then(|key| path.strip_suffix(key)) {
        Some("") => return true,
        Some(parent) => match parent.strip_suffix('.') {
            Some(parent) => parent,
            None => return false,
        },
        None => match path.strip_suffix(".?") {
            Some(parent) => parent,
            None => path,
        },
    };
    !known.is_empty()
        && known.split('.').all(|seg| {
            let name = seg.split('[').next().unwrap_or("");
            let indices = &seg[name.len()..];
            fields.contains(&name)
                && indices.split_inclusive(']').all(|ix| {
                    ix.strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
        })
}

/// A CIDR as written in a config: right, with host bits, too long, of odd spelling.
pub fn cidr_text(rng: &mut Rng, good: Option<String>) -> String {
    if let Some(g) = good {
        return quoted(rng, &g);
    }
    let bad = [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "10.0.0.0",
        "/8",
        "10.0.0.0//8",
        "10.0.0.0/08",
        "010.0.0.0/8",
        "10.0.0.0/8 ",
        " 10.0.0.0/8",
        "256.0.0.0/8",
        "10.0.0/8",
        "10.0.0.0.0/8",
        "fd00::/129",
        "fd00::1/64",
        "::ffff:10.0.0.0/104",
        "fe80::%eth0/64",
        "0.0.0.0/0",
        "::/0",
        "255.255.255.255/32",
        "10.0.0.0/255",
        "10.0.0.0/4294967296",
        "１０.0.0.0/8",
        "10.0.0.0／8",
        "10.0.0.0/8/8",
        "auto",
    ];
    let t = *rng.pick(&bad);
    if t.starts_with(' ') || t.ends_with(' ') || t.contains('%') || t.starts_with('/') {
        format!("'{t}'")
    } else {
        quoted(rng, t)
    }
}

/// A WireGuard key in base64: right, of the wrong length, not base64 at all.
pub fn key_text(rng: &mut Rng, good: bool) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 33];
    rng.fill(&mut bytes);
    let n = if good {
        32
    } else {
        *rng.pick(&[0usize, 1, 31, 33])
    };
    let mut t = String::new();
    for chunk in bytes[..n].chunks(3) {
        let v = chunk.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            t.push(char::from(B64[(v >> (18 - 6 * i) & 63) as usize]));
        }
        for _ in chunk.len()..3 {
            t.push('=');
        }
    }
    if !good && rng.bool() {
        t = (*rng.pick(&["not base64!", "====", "AAAA AAAA", "\"\"", "🔑"])).into();
    }
    quoted(rng, &t)
}

#[cfg(test)]
mod tests {
    use super::is_field_path;

    const FIELDS: &[&str] = &["peers", "networks", "cidr", "vxlan"];

    #[test]
    fn field_paths() {
        assert!(is_field_path("peers[0].networks[12].cidr", "bad", FIELDS));
        assert!(is_field_path("(top level)", "bad", FIELDS));
        assert!(is_field_path(
            "vxlan.?",
            "could not find expected ':'",
            FIELDS
        ));
        assert!(is_field_path(
            "peers[0].",
            "unknown field ``, expected one of",
            FIELDS
        ));
        assert!(is_field_path(
            "peers[0].a.b c",
            "unknown field `a.b c`, expected",
            FIELDS
        ));
        assert!(is_field_path(
            "...",
            "unknown field `...`, expected",
            FIELDS
        ));
        assert!(!is_field_path("?", "could not find expected ':'", FIELDS));
        assert!(!is_field_path("peers[x].cidr", "bad", FIELDS));
        assert!(!is_field_path("peers[0].nope", "bad", FIELDS));
        assert!(!is_field_path("", "bad", FIELDS));
    }
}
