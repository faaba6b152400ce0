//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded), added
/// to `initial`. Not folded, not complemented.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    fold64(acc)
}

fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds carries back into 16 bits.
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum to store for data whose sum is `s`.
pub fn finish(s: u32) -> u16 {
    !fold(s)
}

/// RFC 1624 eqn. 3: the checksum `hc` after the bytes `old` (even length, 16-bit aligned in the
/// checksummed data) became `new`: HC' = ~(~HC + ~m + m').
pub fn adjust(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut s = u32::from(!hc);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        s += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        s += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(s)
}

/// Reads the 16-bit checksum at `at`.
pub fn read(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub fn write(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header (addresses, upper-layer length, protocol).
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, length: u32) -> u32 {
    let mut s = sum(src, 0);
    s = sum(dst, s);
    s += length >> 16;
    s += length & 0xffff;
    s + u32::from(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut data = [
            0x45u8, 0, 0, 28, 1, 2, 0, 0, 64, 17, 0, 0, 10, 244, 0, 10, 10, 245, 0, 10,
        ];
        let c = finish(sum(&data, 0));
        write(&mut data, 10, c);
        let old = [10, 245, 0, 10];
        let new = [10, 244, 3, 99];
        data[16..20].copy_from_slice(&new);
        let adjusted = adjust(c, &old, &new);
        write(&mut data, 10, 0);
        assert_eq!(adjusted, finish(sum(&data, 0)));
    }
}
