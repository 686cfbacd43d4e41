//! The deployment files: the kustomize base renders (`kubectl kustomize`) and every object in it
//! passes `kubernetes-validate --strict`; the sample capture request validates against the
//! CRD's OpenAPI schema, and a broken one does not.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

#[test]
fn the_kustomize_base_renders_and_validates_strictly() {
    let dir = retrace_tests::scratch("deploy");
    let rendered = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/kubernetes/base"))
        .output()
        .expect("kubectl (on the machine image)");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    for kind in ["CustomResourceDefinition", "DaemonSet", "ClusterRole", "ServiceAccount", "ConfigMap"] {
        assert!(text.contains(&format!("kind: {kind}")), "{kind} in the base");
    }
    assert!(text.contains("hostPID: true") && text.contains("fieldPath: spec.nodeName"), "{text}");
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &text).unwrap();
    let checked = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    let report = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "{report}");
    assert_eq!(report.matches(" passed for resource ").count(), 7, "{report}");
}

#[test]
fn the_sample_capture_request_matches_the_crd_schema_and_a_broken_one_does_not() {
    let crd = root().join("deploy/kubernetes/base/crd.yaml");
    let sample = root().join("deploy/examples/capture.yaml");
    // The schema as JSON Schema (OpenAPI v3 is a subset for what the CRD uses).
    let check = |path: &std::path::Path| {
        let script = "import sys, yaml, jsonschema\ncrd = yaml.safe_load(open(sys.argv[1]))\nschema = crd['spec']['versions'][0]['schema']['openAPIV3Schema']\njsonschema.validate(yaml.safe_load(open(sys.argv[2])), schema)\n";
        Command::new("python3").args(["-c", script]).arg(&crd).arg(path).output().unwrap()
    };
    let ok = check(&sample);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let broken = retrace_tests::scratch("deploy-broken").join("broken.yaml");
    let text = std::fs::read_to_string(&sample).unwrap().replace("duration: 5m", "duration: soon");
    std::fs::write(&broken, text).unwrap();
    let refused = check(&broken);
    assert!(!refused.status.success(), "a bad duration must not validate");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("soon"));
}
