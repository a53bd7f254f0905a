//! The deploy/ objects checked without a cluster: the committed manifests are
//! the chart's rendering, every object deserialises strictly into the
//! Kubernetes API types (nothing unknown or misspelled is dropped), and the
//! security rules the docs promise hold.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Container, Namespace, PersistentVolumeClaim, PodSpec, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
        scheduling::v1::PriorityClass,
    },
    serde::{de::DeserializeOwned, Serialize},
};
use serde_json::{json, Value};

use super::{generate, render_chart, split_documents, values, OUTPUT};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every document of the default rendering (from the committed file) and of
/// one with every optional part on.
fn documents(all_features: bool) -> Vec<Value> {
    let text = if all_features {
        let on = json!({
            "certManager": {"enabled": true},
            "serviceMonitor": {"enabled": true},
            "collector": {"persistence": {"enabled": false}, "extraArgs": ["--max-findings=100"]},
            "agent": {"extraArgs": ["--dns-ports=53,5353"]},
        });
        let rendered = render_chart(&root(), values(&root(), &on).unwrap()).unwrap();
        rendered.into_iter().map(|(_, t)| t + "\n---\n").collect::<String>()
    } else {
        std::fs::read_to_string(root().join(OUTPUT)).unwrap()
    };
    split_documents(&text).iter().map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"))).collect()
}

/// Deserialises into `T` and back: any field the API type does not have is lost, and fails.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, doc, "fields lost or changed in a round trip through the API type");
    typed
}

fn kind(doc: &Value) -> (&str, &str) {
    (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""))
}

fn check_types(docs: &[Value]) {
    for doc in docs {
        match kind(doc) {
            ("v1", "Namespace") => drop(strict::<Namespace>(doc)),
            ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(doc)),
            ("v1", "Service") => drop(strict::<Service>(doc)),
            ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(doc)),
            ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(doc)),
            ("apps/v1", "Deployment") => drop(strict::<Deployment>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(strict::<ClusterRole>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(strict::<ClusterRoleBinding>(doc)),
            ("scheduling.k8s.io/v1", "PriorityClass") => drop(strict::<PriorityClass>(doc)),
            // custom resources: not in k8s-openapi; their shape is checked by hand
            ("monitoring.coreos.com/v1", "ServiceMonitor") => assert!(doc["spec"]["endpoints"].is_array(), "{doc:#}"),
            ("monitoring.coreos.com/v1", "PodMonitor") => {
                assert!(doc["spec"]["podMetricsEndpoints"].is_array(), "{doc:#}")
            }
            ("cert-manager.io/v1", "Certificate") => {
                assert!(doc["spec"]["secretName"].is_string() && doc["spec"]["issuerRef"]["name"].is_string())
            }
            other => panic!("an object of an unexpected kind {other:?}: add it to the checks"),
        }
    }
}

fn find<T: DeserializeOwned>(docs: &[Value], want: (&str, &str), name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| kind(d) == want && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {want:?} {name}"));
    serde_json::from_value(doc.clone()).unwrap()
}

#[test]
fn committed_manifests_are_the_rendered_chart() {
    let committed = std::fs::read_to_string(root().join(OUTPUT)).unwrap_or_default();
    assert!(committed == generate(&root()).unwrap(), "{OUTPUT} is stale: run `cargo xtask manifests` and commit it");
}

#[test]
fn no_number_is_printed_as_helm_prints_a_float() {
    // Helm holds values.yaml numbers as float64: without `| int64` a large one
    // renders as 1.6777216e+07, which no flag parser accepts
    let text = std::fs::read_to_string(root().join(OUTPUT)).unwrap();
    for line in text.lines() {
        let exponent = line.split(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '+' && c != '-').any(|w| {
            w.split_once("e+").or_else(|| w.split_once("e-")).is_some_and(|(m, e)| {
                !m.is_empty()
                    && m.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && e.chars().all(|c| c.is_ascii_digit())
            })
        });
        assert!(!exponent, "a float exponent in {OUTPUT}: {line}");
    }
}

#[test]
fn every_object_deserialises_strictly_into_its_api_type() {
    let docs = documents(false);
    check_types(&docs);
    let kinds: BTreeSet<(&str, &str)> = docs.iter().map(kind).collect();
    for k in [("v1", "Namespace"), ("apps/v1", "DaemonSet"), ("apps/v1", "Deployment"), ("v1", "PersistentVolumeClaim")]
    {
        assert!(kinds.contains(&k), "default manifests lack {k:?}");
    }
    let all = documents(true);
    check_types(&all);
    let kinds: BTreeSet<(&str, &str)> = all.iter().map(kind).collect();
    assert!(
        kinds.contains(&("cert-manager.io/v1", "Certificate"))
            && kinds.contains(&("monitoring.coreos.com/v1", "PodMonitor"))
    );
    assert!(!kinds.contains(&("v1", "PersistentVolumeClaim")), "persistence off: no claim");
    let collector: Deployment = find(&all, ("apps/v1", "Deployment"), "podlens-collector");
    let spec = collector.spec.unwrap().template.spec.unwrap();
    let state = spec.volumes.unwrap().into_iter().find(|v| v.name == "state").unwrap();
    assert!(state.empty_dir.is_some() && state.persistent_volume_claim.is_none());
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(args.last().map(String::as_str), Some("--max-findings=100"), "extra args appended");
}

fn pod_spec_of_agent(docs: &[Value]) -> PodSpec {
    let ds: DaemonSet = find(docs, ("apps/v1", "DaemonSet"), "podlens-agent");
    ds.spec.unwrap().template.spec.unwrap()
}

fn caps(c: &Container, which: &str) -> BTreeSet<String> {
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.clone()).unwrap_or_default();
    let list = if which == "add" { caps.add } else { caps.drop };
    list.unwrap_or_default().into_iter().collect()
}

#[test]
fn the_agent_runs_with_exactly_three_capabilities_and_nothing_host_wide() {
    let docs = documents(false);
    let ds: DaemonSet = find(&docs, ("apps/v1", "DaemonSet"), "podlens-agent");
    let strategy = ds.spec.as_ref().unwrap().update_strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert!(strategy.rolling_update.unwrap().max_unavailable.is_some());
    let pod = pod_spec_of_agent(&docs);
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert!(pod.priority_class_name.is_some(), "a PriorityClass");
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );
    for c in &pod.containers {
        let sc = c.security_context.clone().expect("securityContext");
        assert_ne!(sc.privileged, Some(true), "never privileged");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.seccomp_profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"));
        assert_eq!(caps(c, "drop"), BTreeSet::from(["ALL".to_owned()]));
        let want: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN"].map(str::to_owned).into();
        assert_eq!(caps(c, "add"), want, "exactly CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN");
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some(), "probes");
        let r = c.resources.clone().expect("resources");
        for (what, set) in [("requests", r.requests), ("limits", r.limits)] {
            let set = set.unwrap_or_default();
            assert!(set.contains_key("cpu") && set.contains_key("memory"), "{what} of cpu and memory");
        }
        let node_name = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
        let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(field, Some("spec.nodeName"), "from the downward API");
        // every host path is mounted read-only
        let host_paths: Vec<String> =
            pod.volumes.iter().flatten().filter(|v| v.host_path.is_some()).map(|v| v.name.clone()).collect();
        assert!(!host_paths.is_empty());
        for m in c.volume_mounts.iter().flatten().filter(|m| host_paths.contains(&m.name)) {
            assert_eq!(m.read_only, Some(true), "{} is mounted read-only", m.name);
        }
    }
}

#[test]
fn the_collector_runs_as_non_root_without_capabilities() {
    let docs = documents(false);
    let d: Deployment = find(&docs, ("apps/v1", "Deployment"), "podlens-collector");
    let pod = d.spec.unwrap().template.spec.unwrap();
    let psc = pod.security_context.clone().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    for c in &pod.containers {
        let sc = c.security_context.clone().expect("securityContext");
        assert_ne!(sc.privileged, Some(true));
        assert_eq!((sc.allow_privilege_escalation, sc.read_only_root_filesystem), (Some(false), Some(true)));
        assert_eq!(caps(c, "drop"), BTreeSet::from(["ALL".to_owned()]));
        assert!(caps(c, "add").is_empty());
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        assert!(c.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key("memory")));
    }
    let svc: Service = find(&docs, ("v1", "Service"), "podlens-collector");
    let selector = svc.spec.unwrap().selector.unwrap();
    let labels = d_labels(&docs);
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the Service selects the collector pod");
}

fn d_labels(docs: &[Value]) -> std::collections::BTreeMap<String, String> {
    let d: Deployment = find(docs, ("apps/v1", "Deployment"), "podlens-collector");
    d.spec.unwrap().template.metadata.unwrap().labels.unwrap()
}

#[test]
fn rbac_is_read_only_and_covers_what_each_binary_reads() {
    let docs = documents(false);
    let mut granted: std::collections::BTreeMap<String, BTreeSet<(String, String)>> = Default::default();
    for doc in docs.iter().filter(|d| kind(d).1 == "ClusterRole" || kind(d).1 == "Role") {
        let role: ClusterRole = serde_json::from_value(doc.clone()).unwrap();
        let name = role.metadata.name.clone().unwrap();
        for rule in role.rules.unwrap_or_default() {
            for verb in &rule.verbs {
                assert!(["get", "list", "watch"].contains(&verb.as_str()), "{name}: verb {verb} is not read-only");
            }
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            for group in rule.api_groups.unwrap_or_default() {
                for r in rule.resources.iter().flatten() {
                    assert_ne!(r, "*", "{name}: no wildcards");
                    assert!(!r.contains("secrets"), "{name}: never secrets");
                    granted.entry(name.clone()).or_default().insert((group.clone(), r.clone()));
                }
            }
        }
    }
    let set = |items: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        items.iter().map(|(g, r)| (g.to_string(), r.to_string())).collect()
    };
    assert_eq!(granted["podlens-agent"], set(&[("", "pods")]), "the agent reads pods only");
    let collector = set(&[
        ("", "pods"),
        ("", "namespaces"),
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
        ("apps", "replicasets"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ]);
    assert_eq!(granted["podlens-collector"], collector);
    for doc in docs.iter().filter(|d| kind(d).1 == "ClusterRoleBinding") {
        let b: ClusterRoleBinding = serde_json::from_value(doc.clone()).unwrap();
        let subject = &b.subjects.unwrap()[0];
        assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", b.role_ref.name.as_str()));
    }
}

#[test]
fn every_value_is_documented() {
    let text = std::fs::read_to_string(root().join(super::CHART).join("values.yaml")).unwrap();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut previous = "";
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((key, _)) =
            trimmed.split_once(':').filter(|_| !trimmed.starts_with('#') && !trimmed.starts_with('-'))
        {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            // Kubernetes structures passed through whole are documented by their parent
            let passthrough =
                stack.iter().any(|(_, k)| ["resources", "nodeSelector", "tolerations"].contains(&k.as_str()));
            if indent > 0 && !passthrough {
                assert!(previous.trim_start().starts_with('#'), "values.yaml: {key} has no comment above it");
            }
            stack.push((indent, key.to_owned()));
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
}

/// The Dockerfiles are not built here (no container engine): at least every
/// path they copy exists, and they copy every workspace member's manifest and
/// sources (cargo loads the whole workspace before building one package).
#[test]
fn dockerfiles_copy_what_the_workspace_needs() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members_line = cargo.lines().find(|l| l.trim_start().starts_with("members")).expect("members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 5, "{members:?}");
    for file in ["agent.Dockerfile", "collector.Dockerfile"] {
        let text = std::fs::read_to_string(root().join("deploy/docker").join(file)).unwrap();
        let mut copied: Vec<String> = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
            let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
            let (sources, _dest) = parts.split_at(parts.len() - 1);
            for src in sources {
                assert!(root().join(src).exists(), "{file}: COPY {src}: no such path");
                copied.push(src.trim_end_matches('/').to_owned());
            }
        }
        for m in &members {
            for part in ["Cargo.toml", "src"] {
                let path = format!("{m}/{part}");
                assert!(copied.contains(&path), "{file} does not copy {path}");
            }
        }
        assert!(copied.iter().any(|c| c == "Cargo.lock"), "{file}: --locked needs Cargo.lock");
    }
}
