//! Watching the kernel (`ip monitor`): rtnetlink notifications about the agent's routes, rules,
//! overlay device, its addresses and its FDB wake the agent loop, so that state deleted or
//! changed by hand (or by another program) is repaired at once rather than at the next
//! periodic pass.
//!
//! The agent's own changes are notified too; the pass they set off finds nothing to do and
//! writes nothing, so it sets off nothing more.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::rule::RuleAttribute;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, MulticastGroup};

use crate::kernel::MAIN_TABLE;
use crate::netlink::{is_guard, route_table, rule_table};
use crate::reconcile::Owned;

/// The notification groups that carry changes to what the agent owns.
const GROUPS: [MulticastGroup; 8] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Neigh,
];

/// A running monitor: `wake` becomes readable when something of the agent's changed.
pub struct Monitor {
    pub wake: UnixStream,
    marks: Arc<Mutex<Owned>>,
}

impl Monitor {
    /// Subscribes before returning, so no change after this call is missed; then watches on
    /// its own thread.
    pub fn spawn(marks: &Owned) -> anyhow::Result<Monitor> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (conn, handle, messages) =
            rt.block_on(async { rtnetlink::new_multicast_connection(&GROUPS) })?;
        rt.spawn(conn);
        let (wake, tx) = UnixStream::pair()?;
        // A wake-up already pending is enough: never block on a full socket.
        tx.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let marks = Arc::new(Mutex::new(marks.clone()));
        let shared = marks.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || rt.block_on(watch(messages, handle, shared, tx)))?;
        Ok(Monitor { wake, marks })
    }

    /// What to watch from now on (after the agent's table, priority or device changed).
    pub fn set_marks(&self, marks: &Owned) {
        *self.marks.lock().unwrap_or_else(PoisonError::into_inner) = marks.clone();
    }
}

#[cfg(test)]
impl Monitor {
    /// A monitor fed by a test: each byte written to the returned socket is a notification.
    pub(crate) fn fed(marks: &Owned) -> (Monitor, UnixStream) {
        let (wake, tx) = UnixStream::pair().expect("a socket pair");
        wake.set_nonblocking(true).expect("non-blocking");
        let marks = Arc::new(Mutex::new(marks.clone()));
        (Monitor { wake, marks }, tx)
    }
}

type Messages = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

async fn watch(mut messages: Messages, handle: Handle, marks: Arc<Mutex<Owned>>, tx: UnixStream) {
    let mut overlay = Overlay::default();
    while let Some((msg, _)) = messages.next().await {
        let owned = marks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if overlay.name != owned.device {
            overlay = Overlay::look_up(&handle, &owned.device).await;
        }
        let what = match &msg.payload {
            NetlinkPayload::InnerMessage(m) => concerns(m, &owned, &mut overlay.index),
            // The socket's buffer overflowed: whatever was lost may have been ours.
            NetlinkPayload::Overrun(_) => Some("notifications lost"),
            _ => None,
        };
        if let Some(what) = what {
            tracing::debug!(what, "the kernel reports a change of the agent's state");
            let _ = (&tx).write(&[1]);
        }
    }
    tracing::warn!(
        "the kernel's change notifications stopped: repairs wait for the periodic reconciliation"
    );
}

/// The overlay device's index, known from a look-up and then from its link notifications.
#[derive(Default)]
struct Overlay {
    name: String,
    index: Option<u32>,
}

impl Overlay {
    async fn look_up(handle: &Handle, name: &str) -> Overlay {
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        let index = match links.next().await {
            Some(Ok(m)) => Some(m.header.index),
            // Absent (or not answering): its creation will be notified.
            _ => None,
        };
        Overlay {
            name: name.to_string(),
            index,
        }
    }
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// What `m` changed of the agent's state, if anything. Link notifications about the overlay
/// device keep `overlay` (its index) current.
pub fn concerns(
    m: &RouteNetlinkMessage,
    owned: &Owned,
    overlay: &mut Option<u32>,
) -> Option<&'static str> {
    use RouteNetlinkMessage as M;
    match m {
        M::NewRoute(r) | M::DelRoute(r) if route_table(r) == owned.table => Some("route"),
        M::NewRoute(r) | M::DelRoute(r) => {
            (route_table(r) == MAIN_TABLE && is_guard(r)).then_some("guard")
        }
        M::NewRule(r) | M::DelRule(r) => {
            let priority = r.attributes.iter().find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            (priority == Some(owned.priority) || rule_table(r) == owned.table).then_some("rule")
        }
        M::NewLink(l) | M::SetLink(l) | M::DelLink(l) => {
            let ours =
                link_name(l) == Some(owned.device.as_str()) || Some(l.header.index) == *overlay;
            if !ours {
                return None;
            }
            *overlay = match m {
                M::DelLink(_) => None,
                _ => Some(l.header.index),
            };
            Some("device")
        }
        M::NewAddress(a) | M::DelAddress(a) => {
            (overlay.is_some() && Some(a.header.index) == *overlay).then_some("address")
        }
        // Bridge-family neighbours are FDB entries. Of ARP and NDP, only the permanent entries
        // are the agent's, and the kernel's own entries rarely come and go on the overlay (every
        // node the agent talks to has a permanent one). A deletion is reported with the state it
        // was set to on the way (`ip neigh del` reports FAILED), so every deletion counts.
        M::NewNeighbour(n) | M::DelNeighbour(n) => {
            if overlay.is_none() || Some(n.header.ifindex) != *overlay {
                None
            } else if n.header.family == AddressFamily::Bridge {
                Some("fdb")
            } else {
                let deleted = matches!(m, M::DelNeighbour(_));
                (deleted || n.header.state == NeighbourState::Permanent).then_some("neighbour")
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::neighbour::NeighbourMessage;
    use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
    use rtnetlink::packet_route::rule::RuleMessage;
    use RouteNetlinkMessage as M;

    fn owned() -> Owned {
        Owned {
            table: 2741,
            priority: 2741,
            device: "liqo.vxlan".into(),
        }
    }

    fn route(table: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.attributes.push(RouteAttribute::Table(table));
        r
    }

    fn rule(priority: u32, table: u32) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.attributes.push(RuleAttribute::Priority(priority));
        r.attributes.push(RuleAttribute::Table(table));
        r
    }

    fn link(name: &str, index: u32) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    #[test]
    fn routes_and_rules_of_the_agents_table_and_priority_concern_it() {
        let mut overlay = None;
        let o = owned();
        assert_eq!(
            concerns(&M::DelRoute(route(2741)), &o, &mut overlay),
            Some("route")
        );
        assert_eq!(concerns(&M::NewRoute(route(254)), &o, &mut overlay), None);
        assert_eq!(
            concerns(&M::DelRule(rule(2741, 2741)), &o, &mut overlay),
            Some("rule")
        );
        // Either mark is enough: someone's rule at the agent's priority, or into its table.
        assert_eq!(
            concerns(&M::NewRule(rule(2741, 100)), &o, &mut overlay),
            Some("rule")
        );
        assert_eq!(
            concerns(&M::NewRule(rule(100, 2741)), &o, &mut overlay),
            Some("rule")
        );
        assert_eq!(
            concerns(&M::NewRule(rule(100, 254)), &o, &mut overlay),
            None
        );
    }

    #[test]
    fn the_overlay_device_is_followed_by_name_then_by_index() {
        let o = owned();
        let mut overlay = None;
        assert_eq!(
            concerns(&M::NewLink(link("eth0", 2)), &o, &mut overlay),
            None
        );
        assert_eq!(
            concerns(&M::NewLink(link("liqo.vxlan", 7)), &o, &mut overlay),
            Some("device")
        );
        assert_eq!(overlay, Some(7));
        let mut a = AddressMessage::default();
        a.header.index = 7;
        assert_eq!(
            concerns(&M::DelAddress(a.clone()), &o, &mut overlay),
            Some("address")
        );
        a.header.index = 2;
        assert_eq!(concerns(&M::DelAddress(a), &o, &mut overlay), None);
        let mut n = NeighbourMessage::default();
        n.header.ifindex = 7;
        n.header.family = AddressFamily::Inet;
        assert_eq!(
            concerns(&M::NewNeighbour(n.clone()), &o, &mut overlay),
            None,
            "a learnt ARP entry"
        );
        n.header.state = NeighbourState::Failed;
        assert_eq!(
            concerns(&M::DelNeighbour(n.clone()), &o, &mut overlay),
            Some("neighbour"),
            "`ip neigh del` of a permanent entry"
        );
        n.header.state = NeighbourState::Permanent;
        assert_eq!(
            concerns(&M::NewNeighbour(n.clone()), &o, &mut overlay),
            Some("neighbour")
        );
        n.header.family = AddressFamily::Bridge;
        assert_eq!(concerns(&M::DelNeighbour(n), &o, &mut overlay), Some("fdb"));
        assert_eq!(
            concerns(&M::DelLink(link("liqo.vxlan", 7)), &o, &mut overlay),
            Some("device")
        );
        assert_eq!(overlay, None);
    }
}
