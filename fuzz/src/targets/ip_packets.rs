//! Hostile IPv4/IPv6 packets through the remap rewrite and the MSS clamp, both directions, as the
//! engine applies them: egress rewrites the destination then clamps with the transport header
//! found before the rewrite (`from_tun`), ingress rewrites the source then clamps (`from_network`).

use liqonet_gateway::wire::remap::{self, Field};
use liqonet_gateway::wire::{mss, IpPacket};

use crate::driver::pct;
use crate::packets;
use crate::remap_check::{check_clamp, check_rewrite, direction};
use crate::rng::Rng;
use crate::targets::Target;

/// Tunnel MTUs to clamp to, picked by the input's first byte (the last ones leave no room).
const MTUS: [u16; 8] = [1420, 1280, 576, 9000, 65535, 1500, 40, 0];

#[derive(Default)]
pub struct Stats {
    pub inputs: u64,
    pub parsed: u64,
    pub rewritten: [u64; 2],
    pub unchanged: [u64; 2],
    pub rejected: [u64; 2],
    pub icmp_errors: u64,
    pub quotes_rewritten: u64,
    pub clamped: u64,
    scratch: Vec<u8>,
    before: Vec<u8>,
}

impl Stats {
    /// Runs `packet` through both directions, checking each step.
    pub fn exercise(&mut self, packet: &[u8], mtu: u16) -> Result<(), String> {
        self.inputs += 1;
        let parsed = IpPacket::new_checked(packet)
            .ok()
            .map(|p| (p.transport(), p.present_len()));
        self.parsed += u64::from(parsed.is_some());
        for (i, field) in [Field::Dst, Field::Src].into_iter().enumerate() {
            self.scratch.clear();
            self.scratch.extend_from_slice(packet);
            let map = direction(field);
            let result = remap::rewrite(&mut self.scratch, field, &map);
            let outcome = check_rewrite(packet, &self.scratch, field, result)
                .map_err(|e| format!("{field:?} rewrite: {e}"))?;
            match result {
                Ok(true) => self.rewritten[i] += 1,
                Ok(false) => self.unchanged[i] += 1,
                Err(_) => {
                    self.rejected[i] += 1;
                    continue;
                }
            }
            if i == 0 {
                self.icmp_errors += u64::from(outcome.icmp_error);
            }
            self.quotes_rewritten += u64::from(outcome.quote_rewritten);
            // The clamp, as the engine calls it after the rewrite.
            self.before.clear();
            self.before.extend_from_slice(&self.scratch);
            let (t, end, clamped) = match field {
                Field::Dst => {
                    let Some((Some(t), end)) = parsed else {
                        continue;
                    };
                    (t, end, mss::clamp_at(&mut self.scratch, t, end, mtu))
                }
                Field::Src => {
                    let p = IpPacket::new_checked(&self.before).map_err(|e| format!("{e:?}"))?;
                    let (Some(t), end) = (p.transport(), p.present_len()) else {
                        continue;
                    };
                    (t, end, mss::clamp(&mut self.scratch, mtu))
                }
            };
            self.clamped += u64::from(clamped);
            check_clamp(&self.before, &self.scratch, t, end, mtu, clamped)
                .map_err(|e| format!("MSS clamp after the {field:?} rewrite (MTU {mtu}): {e}"))?;
        }
        Ok(())
    }

    pub fn summary(&self) -> String {
        let n = self.inputs;
        format!(
            "parsed {}; egress: rewritten {}, unchanged {}, rejected {}; ingress: rewritten {}, unchanged {}, rejected {}\n\
             ICMP errors rewritten {}, their quotes rewritten {}, MSS clamped {}",
            pct(self.parsed, n),
            pct(self.rewritten[0], n),
            pct(self.unchanged[0], n),
            pct(self.rejected[0], n),
            pct(self.rewritten[1], n),
            pct(self.unchanged[1], n),
            pct(self.rejected[1], n),
            pct(self.icmp_errors, n),
            pct(self.quotes_rewritten, 2 * n),
            pct(self.clamped, 2 * n),
        )
    }
}

#[derive(Default)]
pub struct IpPackets {
    stats: Stats,
}

impl Target for IpPackets {
    /// One byte choosing the MTU, then the packet.
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        out.push(rng.u8());
        packets::packet(rng, out);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&m, packet)) = input.split_first() else {
            return Ok(());
        };
        self.stats
            .exercise(packet, MTUS[usize::from(m) % MTUS.len()])
    }

    fn coverage(&self) -> String {
        self.stats.summary()
    }
}
