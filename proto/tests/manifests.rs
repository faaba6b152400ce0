//! Every Kubernetes manifest in `deploy/` (all but the standalone configs, the kustomizations and
//! the Helm chart, whose rendering tests/e2e/helm.rs checks)
//! is valid, strictly, against the Kubernetes version the code targets (k8s-openapi's `v1_33`),
//! checked offline with the `kubernetes-validate` PyPI package (`make deps` installs it). The
//! kustomizations list every manifest, and only existing ones.

use std::path::{Path, PathBuf};
use std::process::Command;

const KUBERNETES_VERSION: &str = "1.33.0";

fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir()
            && path
                .file_name()
                .is_some_and(|n| n != "standalone" && n != "helm")
        {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(path);
        }
    }
}

#[test]
fn every_manifest_is_valid() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    manifests(&deploy, &mut files);
    assert!(!files.is_empty(), "no manifests under {}", deploy.display());
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("kubernetes-validate is not installed (make deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
}

fn kustomization(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_base_installs_every_manifest_and_the_variants_build_on_it() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let base = deploy.join("base");
    let k = kustomization(&base.join("kustomization.yaml"));
    let listed: Vec<PathBuf> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| base.join(r.as_str().unwrap()))
        .collect();
    for p in &listed {
        assert!(
            p.is_file(),
            "base/kustomization.yaml lists {}, which does not exist",
            p.display()
        );
    }
    let mut files = Vec::new();
    manifests(&deploy, &mut files);
    for f in &files {
        assert!(
            listed.contains(f),
            "{} is not in deploy/base/kustomization.yaml",
            f.display()
        );
    }
    // Variants refer to the base beside them, never to a directory that contains them (kustomize
    // refuses that as a cycle).
    let top = kustomization(&deploy.join("kustomization.yaml"));
    assert_eq!(top["resources"][0], "base");
    let lb = kustomization(&deploy.join("loadbalancer/kustomization.yaml"));
    assert_eq!(lb["resources"][0], "../base");
    let target = lb["patches"][0]["target"]["name"].as_str().unwrap();
    let service = std::fs::read_to_string(base.join("service.yaml")).unwrap();
    assert!(service.contains(&format!("name: {target}")));
}
