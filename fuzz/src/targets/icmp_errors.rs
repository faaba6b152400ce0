//! ICMP and ICMPv6 errors quoting packets (whole, cut short, with quoted headers whose lengths
//! lie) from and to the remapped networks, through the rewrite in both directions: the outer
//! address and the quoted one must move together, with every checksum consistent.

use crate::packets::{self, Shape, Transport};
use crate::rng::Rng;
use crate::targets::ip_packets::Stats;
use crate::targets::Target;

#[derive(Default)]
pub struct IcmpErrors {
    stats: Stats,
}

impl Target for IcmpErrors {
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        out.push(rng.u8());
        let v4 = rng.chance(1, 2);
        let shape = Shape {
            src: packets::addr(rng, v4),
            dst: packets::addr(rng, v4),
            // Now and then an error quoting an error.
            depth: if rng.chance(1, 8) { 2 } else { 1 },
            hostile: rng.chance(1, 4),
            transport: Some(Transport::IcmpError),
        };
        packets::build(rng, &shape, out);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&m, packet)) = input.split_first() else {
            return Ok(());
        };
        self.stats.exercise(packet, 1280 + u16::from(m))
    }

    fn coverage(&self) -> String {
        self.stats.summary()
    }
}
