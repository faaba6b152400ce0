//! TCP MSS clamping: SYNs (and SYN-ACKs) get an MSS that fits the tunnel, so pods with a larger
//! MTU never send segments that would need fragmenting.

use super::checksum;
use super::ip::{IpPacket, Transport};
use super::proto::TCP;

const SYN: u8 = 0x02;
const MSS_OPTION: u8 = 2;

/// Lowers the MSS option of a TCP SYN to what fits `mtu`; returns whether it changed.
pub fn clamp(packet: &mut [u8], mtu: u16) -> bool {
    let Ok(v) = IpPacket::new_checked(packet) else {
        return false;
    };
    match v.transport() {
        Some(t) => clamp_at(packet, t, v.present_len(), mtu),
        None => false,
    }
}

/// [`clamp`] for a packet already parsed: its transport header `t`, the packet ending at `end`.
pub fn clamp_at(packet: &mut [u8], t: Transport, end: usize, mtu: u16) -> bool {
    if t.protocol != TCP || end > packet.len() || t.offset > end {
        return false;
    }
    let tcp = &mut packet[t.offset..end];
    if tcp.len() < 20 || tcp[13] & SYN == 0 {
        return false;
    }
    // IP header (with IPv6 extension headers) and the 20-byte TCP header.
    let Some(max) = usize::from(mtu).checked_sub(t.offset + 20) else {
        return false;
    };
    let max = max.min(usize::from(u16::MAX)) as u16;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || data_offset > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < data_offset {
        match tcp[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > data_offset {
                    return false;
                }
                if kind == MSS_OPTION && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if mss <= max {
                        return false;
                    }
                    // The checksum update works on 16-bit words: take the aligned span around
                    // the value (it sits at an odd offset after an odd number of NOPs).
                    let start = (i + 2) & !1;
                    let span = if (i + 2) % 2 == 0 { 2 } else { 4 };
                    let mut old = [0u8; 4];
                    old[..span].copy_from_slice(&tcp[start..start + span]);
                    tcp[i + 2..i + 4].copy_from_slice(&max.to_be_bytes());
                    let c = checksum::adjust(
                        checksum::read(tcp, 16),
                        &old[..span],
                        &tcp[start..start + span],
                    );
                    checksum::write(tcp, 16, c);
                    return true;
                }
                i += len;
            }
        }
    }
    false
}
