//! The Internet checksum, written here again so the checks never trust the code they check.

/// Ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte padded), folded.
pub fn sum(data: &[u8], initial: u32) -> u16 {
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store for data summing to `s`.
pub fn finish(s: u16) -> u16 {
    !s
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header.
pub fn pseudo(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u32 {
    let s = u32::from(sum(dst, u32::from(sum(src, 0))));
    s + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(protocol)
}

/// Equal as ones'-complement numbers (0x0000 and 0xffff are both zero).
pub fn same(a: u16, b: u16) -> bool {
    a == b || matches!((a, b), (0, 0xffff) | (0xffff, 0))
}

pub fn read(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub fn write(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
