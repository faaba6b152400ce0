//! What the gateway and the route agent show about themselves over HTTP: a server that never
//! touches the caller's work ([`http`]), a client for their `status` commands ([`client`]), and
//! the metrics they share ([`build_info`]).

pub mod client;
pub mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The content type of [`prometheus_client::encoding::text::encode`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    component: &'static str,
    version: &'static str,
    profile: &'static str,
}

/// `liqonet_build_info{component, version, profile} 1`, so dashboards can tell which build runs.
pub fn register_build_info(registry: &mut Registry, component: &'static str) {
    let build = Build {
        component,
        version: env!("CARGO_PKG_VERSION"),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    };
    registry.register(
        "liqonet_build",
        // The registry ends help texts with a period itself.
        "The build that runs: component, version and profile",
        Info::new(build),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_is_one_info_family() {
        let mut registry = Registry::default();
        register_build_info(&mut registry, "gateway");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE liqonet_build info\n"), "{text}");
        assert!(
            text.contains("liqonet_build_info{component=\"gateway\",version=\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
