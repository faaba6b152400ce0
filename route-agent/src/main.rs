//! The route agent. Its netlink reconciler is not written yet; until then the gateway node is the
//! only node with routes to foreign clusters.

fn main() {
    eprintln!(
        "liqonet-route-agent: not implemented yet; run the gateway on the node that hosts the pods"
    );
    std::process::exit(2);
}
