//! Property tests: whatever the packet, remapping leaves every checksum valid (checked from
//! scratch), round-trips, rewrites ICMP quotes consistently, and survives malformed input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use liqonet_proto::Cidr;
use proptest::prelude::*;

use super::{rewrite, Field};
use crate::wire::checksum::{finish, sum};
use crate::wire::ip::IpPacket;
use crate::wire::mss;
use crate::wire::testing::{build, verify, Spec, L4};

fn addr(v6: bool) -> impl Strategy<Value = IpAddr> {
    if v6 {
        any::<u128>()
            .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
            .boxed()
    } else {
        any::<u32>()
            .prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
            .boxed()
    }
}

fn ip_options(v6: bool) -> impl Strategy<Value = Vec<u8>> {
    if v6 {
        prop_oneof![Just(0usize), Just(6), Just(14)]
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n))
            .boxed()
    } else {
        (0usize..=10)
            .prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4))
            .boxed()
    }
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    // Odd and even lengths; some UDP payloads ask for a zero (absent) IPv4 UDP checksum.
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut p| {
            let mut v = b"NOCSUM".to_vec();
            v.append(&mut p);
            v
        }),
    ]
}

fn plain_l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (
            any::<bool>(),
            (0usize..=10).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
            payload()
        )
            .prop_map(|(syn, options, payload)| L4::Tcp {
                syn,
                options,
                payload
            }),
        payload().prop_map(|payload| L4::Udp { payload }),
        payload().prop_map(|payload| L4::Echo { payload }),
    ]
}

fn plain_spec(v6: bool) -> impl Strategy<Value = Spec> {
    (addr(v6), addr(v6), ip_options(v6), plain_l4()).prop_map(|(src, dst, ip_options, l4)| Spec {
        src,
        dst,
        ip_options,
        l4,
    })
}

/// A packet: plain, or an ICMP error quoting a plain packet sent back by its destination.
fn spec() -> impl Strategy<Value = Spec> {
    any::<bool>().prop_flat_map(|v6| {
        prop_oneof![
            plain_spec(v6),
            (plain_spec(v6), addr(v6), 0usize..400).prop_map(|(q, router, keep)| {
                let keep = keep.max(if q.src.is_ipv4() {
                    20 + q.ip_options.len()
                } else {
                    48
                });
                Spec {
                    src: router,
                    dst: q.src,
                    ip_options: vec![],
                    l4: L4::Error {
                        quoted: Box::new(q),
                        keep,
                    },
                }
            }),
        ]
    })
}

/// A prefix containing `ip` (random length) and another prefix of the same length.
fn mapping(ip: IpAddr) -> impl Strategy<Value = (Cidr, Cidr)> {
    let max = if ip.is_ipv4() { 32u8 } else { 128 };
    (0..=max, addr(!ip.is_ipv4())).prop_map(move |(len, to)| {
        let net = |a: IpAddr| {
            let bits = if a.is_ipv4() { 32 } else { 128 };
            let masked = match a {
                IpAddr::V4(x) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(x) & u32::MAX.checked_shl(bits - u32::from(len)).unwrap_or(0),
                )),
                IpAddr::V6(x) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(x) & u128::MAX.checked_shl(bits - u32::from(len)).unwrap_or(0),
                )),
            };
            Cidr::new(masked, len).unwrap()
        };
        (net(ip), net(to))
    })
}

fn target(p: &Spec, field: Field) -> IpAddr {
    if field == Field::Src {
        p.src
    } else {
        p.dst
    }
}

fn field_addr(bytes: &[u8], field: Field) -> IpAddr {
    let v = IpPacket::new_checked(bytes).unwrap();
    if field == Field::Src {
        v.src_addr()
    } else {
        v.dst_addr()
    }
}

fn case() -> impl Strategy<Value = (Spec, Field, (Cidr, Cidr))> {
    (spec(), prop_oneof![Just(Field::Src), Just(Field::Dst)]).prop_flat_map(|(s, f)| {
        let m = mapping(target(&s, f));
        (Just(s), Just(f), m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn remapped_packets_verify_from_scratch((spec, field, (from, to)) in case()) {
        let original = build(&spec);
        prop_assert!(verify(&original).is_ok(), "builder: {:?}", verify(&original));
        let mut p = original.clone();
        let map = |a: IpAddr| from.swap_prefix(a, &to);
        rewrite(&mut p, field, &map).unwrap();
        prop_assert_eq!(verify(&p), Ok(()));
        let expected = from.swap_prefix(target(&spec, field), &to).unwrap();
        prop_assert_eq!(field_addr(&p, field), expected);
        prop_assert_eq!(p.len(), original.len());
    }

    #[test]
    fn egress_then_ingress_round_trips((spec, field, (from, to)) in case()) {
        // The way back maps addresses of `to`; a quoted address that was in `to` without being in
        // `from` would be moved on the way back only: not a round trip.
        if let L4::Error { quoted, .. } = &spec.l4 {
            let other = if field == Field::Src { quoted.dst } else { quoted.src };
            prop_assume!(from.contains(other) || !to.contains(other));
        }
        let original = build(&spec);
        let mut p = original.clone();
        rewrite(&mut p, field, &|a| from.swap_prefix(a, &to)).unwrap();
        rewrite(&mut p, field, &|a| to.swap_prefix(a, &from)).unwrap();
        prop_assert_eq!(p, original);
    }

    #[test]
    fn icmp_errors_rewrite_the_quote_consistently(
        (q, router, keep, (from, to)) in any::<bool>().prop_flat_map(|v6| (plain_spec(v6), addr(v6), 0usize..200))
            .prop_flat_map(|(q, r, k)| { let m = mapping(q.src); (Just(q), Just(r), Just(k), m) })
    ) {
        // The error goes back to the quoted packet's sender: outer destination = quoted source.
        let hl = if q.src.is_ipv4() { 20 + q.ip_options.len() } else { 40 + q.ip_options.len() + usize::from(!q.ip_options.is_empty()) * 2 };
        let spec = Spec { src: router, dst: q.src, ip_options: vec![], l4: L4::Error { quoted: Box::new(q.clone()), keep: keep.max(hl) } };
        let mut p = build(&spec);
        rewrite(&mut p, Field::Dst, &|a| from.swap_prefix(a, &to)).unwrap();
        prop_assert_eq!(verify(&p), Ok(()));
        let mapped = from.swap_prefix(q.src, &to).unwrap();
        let outer = IpPacket::new_checked(&p).unwrap();
        let t = outer.transport().unwrap();
        let quote = IpPacket::new_quoted(&p[t.offset + 8..]).unwrap();
        prop_assert_eq!(outer.dst_addr(), mapped);
        prop_assert_eq!(quote.src_addr(), mapped);
    }

    #[test]
    fn every_ipv4_fragment_is_rewritten(
        (spec, field, (from, to), cut) in (plain_spec(false), prop_oneof![Just(Field::Src), Just(Field::Dst)], 1usize..6)
            .prop_flat_map(|(s, f, c)| { let m = mapping(target(&s, f)); (Just(s), Just(f), m, Just(c)) })
    ) {
        let whole = build(&spec);
        let hl = usize::from(whole[0] & 0xf) * 4;
        let data = &whole[hl..];
        // Split the IP payload at multiples of 8 into fragments.
        // (The first fragment holds the whole transport header, as RFC 1858 requires.)
        let step = (data.len() / cut / 8 * 8).max(64);
        let mut frags = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + step).min(data.len());
            let mut f = whole[..hl].to_vec();
            f.extend_from_slice(&data[off..end]);
            let flen = f.len() as u16;
            f[2..4].copy_from_slice(&flen.to_be_bytes());
            let flags = if end < data.len() { 0x2000u16 } else { 0 } | (off / 8) as u16;
            f[6..8].copy_from_slice(&flags.to_be_bytes());
            f[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum(&f[..hl], 0));
            f[10..12].copy_from_slice(&c.to_be_bytes());
            frags.push(f);
            off = end;
        }
        let map = |a: IpAddr| from.swap_prefix(a, &to);
        let expected = from.swap_prefix(target(&spec, field), &to).unwrap();
        let mut reassembled = Vec::new();
        for f in &mut frags {
            rewrite(f, field, &map).unwrap();
            prop_assert_eq!(verify(f), Ok(()));
            prop_assert_eq!(field_addr(f, field), expected);
            reassembled.extend_from_slice(&f[hl..]);
        }
        let mut datagram = frags[0][..hl].to_vec();
        datagram.extend_from_slice(&reassembled);
        let dlen = datagram.len() as u16;
        datagram[2..4].copy_from_slice(&dlen.to_be_bytes());
        datagram[6..8].copy_from_slice(&[0, 0]);
        datagram[10..12].copy_from_slice(&[0, 0]);
        let c = finish(sum(&datagram[..hl], 0));
        datagram[10..12].copy_from_slice(&c.to_be_bytes());
        prop_assert_eq!(verify(&datagram), Ok(()), "the reassembled datagram");
    }

    #[test]
    fn malformed_packets_never_panic_and_stay_unchanged(
        (spec, field, (from, to)) in case(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()
    ) {
        let mut p = build(&spec);
        let n = cut.index(p.len() + 1);
        p.truncate(n);
        if !p.is_empty() {
            let i = flip.0.index(p.len());
            p[i] ^= flip.1;
        }
        let before = p.clone();
        if rewrite(&mut p, field, &|a| from.swap_prefix(a, &to)).is_err() {
            prop_assert_eq!(&p, &before);
        }
        let _ = mss::clamp(&mut p, 1420);
    }

    #[test]
    fn mss_is_clamped_and_the_checksum_stays_valid(
        v6 in any::<bool>(), nops in 0usize..4, mss in any::<u16>(), mtu in 1280u16..9000, syn in any::<bool>(),
    ) {
        let mut options = vec![1u8; nops];
        options.extend_from_slice(&[2, 4]);
        options.extend_from_slice(&mss.to_be_bytes());
        while options.len() % 4 != 0 {
            options.push(0);
        }
        let (src, dst) = if v6 { ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()) } else { ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()) };
        let spec = Spec { src, dst, ip_options: vec![], l4: L4::Tcp { syn, options, payload: vec![] } };
        let mut p = build(&spec);
        let changed = mss::clamp(&mut p, mtu);
        prop_assert_eq!(verify(&p), Ok(()));
        let hl = if v6 { 40 } else { 20 };
        let at = hl + 20 + nops + 2;
        let now = u16::from_be_bytes([p[at], p[at + 1]]);
        let max = mtu - hl as u16 - 20;
        prop_assert_eq!(changed, syn && mss > max);
        prop_assert_eq!(now, if syn { mss.min(max) } else { mss });
    }
}

#[test]
fn ipv4_udp_without_checksum_stays_without() {
    let spec = Spec {
        src: "10.244.0.10".parse().unwrap(),
        dst: "10.245.0.10".parse().unwrap(),
        ip_options: vec![],
        l4: L4::Udp {
            payload: b"NOCSUM and more".to_vec(),
        },
    };
    let mut p = build(&spec);
    assert_eq!(&p[26..28], &[0, 0]);
    let (from, to): (Cidr, Cidr) = (
        "10.245.0.0/16".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    );
    assert!(rewrite(&mut p, Field::Dst, &|a| from.swap_prefix(a, &to)).unwrap());
    assert_eq!(&p[26..28], &[0, 0]);
    assert_eq!(verify(&p), Ok(()));
}

#[test]
fn a_first_fragment_cut_before_the_checksum_is_refused() {
    let spec = Spec {
        src: "10.244.0.10".parse().unwrap(),
        dst: "10.245.0.10".parse().unwrap(),
        ip_options: vec![],
        l4: L4::Tcp {
            syn: false,
            options: vec![],
            payload: vec![7; 40],
        },
    };
    let whole = build(&spec);
    // A first fragment with only 8 bytes of the TCP header.
    let mut f = whole[..28].to_vec();
    f[2..4].copy_from_slice(&28u16.to_be_bytes());
    f[6] = 0x20;
    let before = f.clone();
    let (from, to): (Cidr, Cidr) = (
        "10.245.0.0/16".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    );
    assert!(rewrite(&mut f, Field::Dst, &|a| from.swap_prefix(a, &to)).is_err());
    assert_eq!(f, before);
}

/// An ICMP error from a pod whose quoted IPv4 header states a total length shorter than the
/// header itself: rewriting its destination (egress, as to a remapped peer) must not underflow.
#[test]
fn a_quote_stating_less_than_its_own_header_does_not_underflow() {
    let mut p = vec![0u8; 20 + 8 + 28];
    p[0] = 0x45;
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&[10, 244, 0, 10]);
    p[16..20].copy_from_slice(&[10, 245, 0, 10]);
    p[20] = 3; // destination unreachable
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let q = &mut p[28..];
    q[0] = 0x45;
    q[3] = 4; // total length 4
    q[9] = 17;
    q[12..16].copy_from_slice(&[10, 245, 0, 10]);
    q[16..20].copy_from_slice(&[10, 244, 0, 10]);
    let map = |a: IpAddr| {
        (a == "10.245.0.10".parse::<IpAddr>().unwrap()).then(|| "10.250.0.10".parse().unwrap())
    };
    let _ = rewrite(&mut p, Field::Dst, &map);
}
