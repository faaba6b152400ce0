//! Routes for the peers' networks into the TUN device, installed and removed with rtnetlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use liqonet_proto::Cidr;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::runtime::Runtime;

/// Route protocol number that marks the gateway's routes (`ip route show proto 201`).
pub const ROUTE_PROTOCOL: u8 = 201;

/// The routes this gateway installed; [`Routes::remove_all`] removes exactly those.
pub struct Routes {
    rt: Runtime,
    handle: Handle,
    ifindex: u32,
    installed: Vec<Cidr>,
}

impl Routes {
    pub fn new(ifindex: u32) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, _) = rt.block_on(async { rtnetlink::new_connection() })?;
        rt.spawn(conn);
        Ok(Routes {
            rt,
            handle,
            ifindex,
            installed: Vec::new(),
        })
    }

    /// Routes `cidr` into the TUN, replacing a stale route for the same prefix if there is one.
    pub fn add(&mut self, cidr: Cidr) -> anyhow::Result<()> {
        let req = self.handle.route().add(self.message(cidr)).replace();
        self.rt
            .block_on(req.execute())
            .map_err(|e| anyhow::anyhow!("cannot route {cidr} into the TUN device: {e}"))?;
        self.installed.push(cidr);
        tracing::debug!(%cidr, "route installed");
        Ok(())
    }

    /// Gives the TUN device a host address (it goes away with the device).
    pub fn add_address(&mut self, address: Cidr) -> anyhow::Result<()> {
        let req = self
            .handle
            .address()
            .add(self.ifindex, address.addr(), address.prefix_len());
        self.rt
            .block_on(req.execute())
            .map_err(|e| anyhow::anyhow!("cannot add {address} to the TUN device: {e}"))
    }

    /// Makes the routes into the TUN exactly `wanted`: adds what is missing, removes the rest.
    pub fn sync(&mut self, wanted: &[Cidr]) -> anyhow::Result<()> {
        let stale: Vec<Cidr> = self
            .installed
            .iter()
            .filter(|c| !wanted.contains(c))
            .copied()
            .collect();
        for cidr in stale {
            let req = self.handle.route().del(self.message(cidr));
            if let Err(e) = self.rt.block_on(req.execute()) {
                tracing::warn!(%cidr, "cannot remove route: {e}");
            }
            self.installed.retain(|c| *c != cidr);
        }
        for cidr in wanted
            .iter()
            .filter(|c| !self.installed.contains(c))
            .copied()
            .collect::<Vec<_>>()
        {
            self.add(cidr)?;
        }
        Ok(())
    }

    /// Removes every route this gateway installed; reports but survives individual failures.
    pub fn remove_all(&mut self) {
        for cidr in std::mem::take(&mut self.installed) {
            let req = self.handle.route().del(self.message(cidr));
            if let Err(e) = self.rt.block_on(req.execute()) {
                tracing::warn!(%cidr, "cannot remove route: {e}");
            }
        }
    }

    /// `cidr dev <tun> proto 201 scope link`.
    fn message(&self, cidr: Cidr) -> RouteMessage {
        let mut msg = match cidr.addr() {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, cidr.prefix_len())
                .output_interface(self.ifindex)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, cidr.prefix_len())
                .output_interface(self.ifindex)
                .build(),
        };
        msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        msg
    }
}
