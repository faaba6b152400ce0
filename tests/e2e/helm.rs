//! The Helm chart (`deploy/helm/liqonet/`) against the kustomize manifests it mirrors: `helm lint
//! --strict`, the same objects rendered by both (parsed and compared, Helm's own labels and the
//! config checksum aside), every rendered object valid for Kubernetes, and the values schema
//! refusing what it must. Helm and kubectl are the lab's, built by scripts/controlplane.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/liqonet")
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool(name: &str) -> PathBuf {
    liqonet_lab::kube::controlplane::binaries()
        .expect("the lab's binaries (scripts/controlplane.sh builds them)")
        .join(name)
}

/// Runs `bin args`; its stdout, or its stderr as the error.
fn run(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool(bin))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn helm_template(extra: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "liqonet",
        chart.to_str().unwrap(),
        "--namespace",
        "liqonet",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    run("helm", &args)
}

/// The objects of a multi-document YAML stream, by `kind/namespace/name`.
fn objects(yaml: &str) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_yaml::Value = serde_yaml::Value::deserialize(doc).unwrap();
        let v: Value = serde_json::to_value(v).unwrap();
        if v.is_null() {
            continue;
        }
        let key = format!(
            "{}/{}/{}",
            v["kind"].as_str().unwrap_or_default(),
            v["metadata"]["namespace"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        out.insert(key, v);
    }
    out
}

/// What the comparison leaves aside: Helm's own labels, the config checksum on pod templates,
/// an empty label or annotation map left behind.
fn normalized(mut v: Value) -> Value {
    fn strip(meta: &mut Value) {
        for (field, keys) in [
            (
                "labels",
                &[
                    "helm.sh/chart",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version",
                ][..],
            ),
            ("annotations", &["checksum/config"][..]),
        ] {
            if let Some(map) = meta.get_mut(field).and_then(Value::as_object_mut) {
                for k in keys {
                    map.remove(*k);
                }
                if map.is_empty() {
                    meta.as_object_mut().map(|m| m.remove(field));
                }
            }
        }
    }
    strip(&mut v["metadata"]);
    if let Some(meta) = v.pointer_mut("/spec/template/metadata") {
        strip(meta);
    }
    v
}

/// The chart's objects with `values` against kustomize's in `dir`: equal, the Namespace (the
/// chart does not render it) and the chart's hooks aside.
fn same_objects(values: &[&str], dir: &Path) {
    let helm = objects(&helm_template(values).unwrap());
    let kustomize = objects(&run("kubectl", &["kustomize", dir.to_str().unwrap()]).unwrap());
    let helm: std::collections::BTreeMap<String, Value> = helm
        .into_iter()
        .filter(|(_, v)| v["metadata"]["annotations"]["helm.sh/hook"].is_null())
        .map(|(k, v)| (k, normalized(v)))
        .collect();
    let kustomize: std::collections::BTreeMap<String, Value> = kustomize
        .into_iter()
        .filter(|(k, _)| !k.starts_with("Namespace/"))
        .collect();
    let names =
        |m: &std::collections::BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&helm),
        names(&kustomize),
        "the chart and {} make different objects",
        dir.display()
    );
    for (k, want) in &kustomize {
        let mut diffs = Vec::new();
        differences("", &helm[k], want, &mut diffs);
        assert!(
            diffs.is_empty(),
            "{k} differs from {}:\n{}",
            dir.display(),
            diffs.join("\n")
        );
    }
    println!(
        "{} objects, the same as `kubectl kustomize {}`",
        kustomize.len(),
        dir.display()
    );
}

/// Where `a` (the chart's) and `b` (kustomize's) differ, as `path: a | b` lines.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (p, n) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}/{k}"), p, n, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, n)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}/{i}"), p, n, out);
            }
        }
        // kustomize writes 65535.0 as 65535: the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(format!("{path}: helm {a} | kustomize {b}")),
        _ => {}
    }
}

#[test]
fn the_chart_lints_and_its_versions_are_the_crates() {
    let out = run("helm", &["lint", "--strict", chart().to_str().unwrap()]).unwrap();
    println!("{out}");
    let meta: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(meta["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(meta["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_chart_renders_what_kustomize_renders() {
    same_objects(&[], &deploy());
    same_objects(
        &["--set", "service.type=LoadBalancer"],
        &deploy().join("loadbalancer"),
    );
}

#[test]
fn every_rendered_object_is_valid_for_kubernetes() {
    let rendered = helm_template(&[
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--set",
        "realtimePriority=0",
        "--set",
        "lease.retryPeriod=200ms",
    ])
    .unwrap();
    let all = objects(&rendered);
    // Where the Prometheus Operator is installed, and only there, a ServiceMonitor.
    assert!(
        all.keys().any(|k| k.starts_with("ServiceMonitor/")),
        "{:?}",
        all.keys()
    );
    let plain = objects(&helm_template(&[]).unwrap());
    assert!(!plain.keys().any(|k| k.starts_with("ServiceMonitor/")));
    // kubernetes-validate knows the core API, not the Prometheus Operator's.
    let core: Vec<String> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("ServiceMonitor/"))
        .map(|(_, v)| serde_yaml::to_string(v).unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("liqonet-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, core.join("---\n")).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate is not installed (make deps installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{} rendered objects valid (kubernetes-validate, strict)",
        core.len()
    );
}

#[test]
fn the_schema_refuses_a_wrong_type_and_an_unknown_key_naming_it() {
    let err = helm_template(&["--set", "mtu=big"]).unwrap_err();
    println!("mtu=big: {err}");
    assert!(err.contains("mtu"), "{err}");
    let dir = std::env::temp_dir().join(format!("liqonet-helm-values-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("values.yaml");
    std::fs::write(&file, "gateway:\n  readinessProbe:\n    periodSecond: 1\n").unwrap();
    let err = helm_template(&["--values", file.to_str().unwrap()]).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    println!("gateway.readinessProbe.periodSecond: {err}");
    assert!(err.contains("periodSecond"), "{err}");
    // Maps of the user's own keys take any key.
    helm_template(&[
        "--set",
        "labels.team=net",
        "--set",
        "gateway.nodeSelector.zone=a",
    ])
    .unwrap();
}
