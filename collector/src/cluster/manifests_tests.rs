use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifests::{load_dir, parse_file, LoadError, ManifestError, Manifests, MAX_DEPTH, MAX_FILES};

fn write(root: &Path, rel: &str, text: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn parse(file: &str, text: &str) -> Manifests {
    let mut out = Manifests::default();
    parse_file(file, text, &mut out);
    out
}

fn pod(ns_line: &str, name: &str, image: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{ns_line}spec:\n  containers:\n  - name: c\n    image: {image}\n")
}

fn pod_names(m: &Manifests) -> Vec<String> {
    m.pods
        .iter()
        .map(|p| format!("{}/{}", p.metadata.namespace.as_deref().unwrap(), p.metadata.name.as_deref().unwrap()))
        .collect()
}

fn skipped(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

const MIXED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: prod, labels: {app: web}}
spec:
  nodeName: node-a
  containers:
  - name: web
    image: nginx:1.27
    ports: [{containerPort: 8080, protocol: TCP}]
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.7]}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}}], ports: [{port: 8080}]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: prod}
data: {a: b}
"#;

#[test]
fn multi_document_yaml_keeps_every_supported_kind() {
    let m = parse("mixed.yaml", MIXED);
    assert_eq!(m.errors, Vec::<ManifestError>::new());
    assert_eq!(m.namespaces[0].metadata.labels.as_ref().unwrap()["team"], "web");
    assert_eq!(pod_names(&m), ["prod/web-1"]);
    let spec = m.pods[0].spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(spec.containers[0].ports.as_ref().unwrap()[0].container_port, 8080);
    assert_eq!(m.pods[0].status.as_ref().unwrap().pod_ip.as_deref(), Some("10.0.0.7"));
    let svc_port = &m.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((svc_port.port, svc_port.target_port.clone()), (80, Some(IntOrString::Int(8080))));
    assert_eq!(m.endpoint_slices[0].endpoints[0].addresses, ["10.0.0.7"]);
    assert_eq!(m.nodes[0].metadata.name.as_deref(), Some("node-a"));
    let policy = m.policies[0].spec.as_ref().unwrap();
    assert_eq!(policy.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let peer = &policy.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0];
    assert_eq!(peer.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["team"], "web");
    assert_eq!(m.skipped, skipped(&[("ConfigMap", 1)]));
    assert!(m.warnings.is_empty());
}

#[test]
fn kubectl_list_and_typed_api_list_are_expanded() {
    let kubectl = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n\
        - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {containers: [{name: c}]}}\n\
        - {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x, uid: u1}, spec: {replicas: 3}}\n\
        - {apiVersion: v1, kind: Secret, metadata: {name: s}}\n";
    // The API's own PodList leaves apiVersion and kind off its items.
    let typed = "apiVersion: v1\nkind: PodList\nitems:\n- {metadata: {name: b, namespace: y}, spec: {containers: [{name: c}]}}\n";
    let mut m = parse("all.yaml", kubectl);
    parse_file("pods.yaml", typed, &mut m);
    assert_eq!(m.errors, Vec::<ManifestError>::new());
    assert_eq!(pod_names(&m), ["x/a", "y/b"]);
    assert_eq!((m.owners[0].kind.as_str(), m.owners[0].uid.as_deref()), ("Deployment", Some("u1")));
    assert_eq!(m.skipped, skipped(&[("Secret", 1)]));
}

#[test]
fn list_items_are_named_in_errors_and_nesting_is_bounded() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: ok}, spec: {containers: [{name: c}]}}\n\
        - {apiVersion: v1, kind: List, items: [{apiVersion: v1, kind: Pod, metadata: {name: bad}, spec: {containers: 7}}]}\n\
        - {apiVersion: v1, kind: List, items: [{apiVersion: v1, kind: List, items: []}]}\n";
    let m = parse("list.yaml", text);
    assert_eq!(pod_names(&m), ["default/ok"]);
    assert_eq!(m.errors.len(), 2);
    assert_eq!((m.errors[0].document, m.errors[0].items.clone()), (Some(1), vec![1, 0]));
    assert_eq!(m.errors[0].field.as_deref(), Some("spec.containers"));
    assert!(m.errors[0]
        .to_string()
        .starts_with("list.yaml: document 1, items[1].items[0] (Pod default/bad): spec.containers: "));
    assert_eq!(m.errors[1].items, [2, 0]);
    assert_eq!(m.errors[1].message, "a List nested more than one level deep");
}

#[test]
fn json_file_and_nested_directories_load_while_hidden_and_other_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "apps/web/deep/pod.yml", pod("  namespace: web\n", "nested", "img"));
    let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "web"},
        "spec": {"ports": [{"port": 443, "targetPort": "https"}]}}"#;
    write(root, "svc.JSON", json);
    write(root, ".git/objects/pod.yaml", pod("", "from-git", "img"));
    write(root, ".github/ci.yml", pod("", "from-ci", "img"));
    write(root, "apps/.hidden.yaml", pod("", "hidden", "img"));
    write(root, "README.md", "apiVersion: v1\nkind: Pod\n");
    write(root, "pod.yaml.bak", pod("", "backup", "img"));
    let m = load_dir(root).unwrap();
    assert_eq!(m.errors, Vec::<ManifestError>::new());
    assert_eq!(pod_names(&m), ["web/nested"]);
    let port = &m.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.target_port, Some(IntOrString::String("https".to_string())));
    assert_eq!(m.services[0].metadata.name.as_deref(), Some("api"));
}

#[test]
fn unknown_kinds_are_counted_per_kind_and_group() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n\
        ---\napiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\n\
        ---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\nspec: {template: {}}\n\
        ---\napiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n\
        ---\nreplicaCount: 2\nimage: {tag: latest}\n";
    let m = parse("mixed.yaml", text);
    let expected = [("<no kind>", 1), ("Certificate.cert-manager.io", 1), ("ConfigMap", 2)];
    let mut expected = skipped(&expected);
    expected.extend(skipped(&[("Deployment.extensions", 1), ("Service.serving.knative.dev", 1)]));
    assert_eq!(m.skipped, expected);
    assert!(m.services.is_empty() && m.owners.is_empty() && m.errors.is_empty());
}

#[test]
fn yaml_syntax_error_names_file_and_document() {
    let text = format!("{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: [broken\n", pod("", "first", "img"));
    let m = parse("apps/broken.yaml", &text);
    assert_eq!(pod_names(&m), ["default/first"]);
    assert_eq!(m.errors.len(), 1);
    let err = &m.errors[0];
    assert_eq!((err.file.as_str(), err.document), ("apps/broken.yaml", Some(2)));
    assert!(err.message.starts_with("invalid YAML: "), "{}", err.message);
    assert!(err.to_string().starts_with("apps/broken.yaml: document 2: invalid YAML"), "{err}");
}

#[test]
fn policy_typos_are_rejected_with_the_field_while_the_file_still_loads() {
    let policy = |name: &str, spec: &str| {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec: {spec}\n")
    };
    let text = [
        pod("  namespace: prod\n", "web", "img"),
        policy("typo", "{podSelecter: {matchLabels: {app: web}}}"),
        policy("deep-typo", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabel: {app: db}}}]}]}"),
        policy("top-typo", "{podSelector: {}}\nstatus: {}"),
        policy("good", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}"),
    ]
    .concat();
    let m = parse("policies.yaml", &text);
    assert_eq!(pod_names(&m), ["prod/web"]);
    assert_eq!(m.policies.len(), 1);
    assert_eq!(m.policies[0].metadata.name.as_deref(), Some("good"));
    let fields: Vec<_> = m.errors.iter().map(|e| (e.document, e.field.as_deref().unwrap())).collect();
    let deep = "spec.ingress[0].from[0].podSelector.matchLabel";
    assert_eq!(fields, [(Some(2), "spec.podSelecter"), (Some(3), deep), (Some(4), "status")]);
    assert_eq!(
        m.errors[0].to_string(),
        "policies.yaml: document 2 (NetworkPolicy prod/typo): spec.podSelecter: unknown field, expected one of: \
         egress, ingress, podSelector, policyTypes"
    );
}

#[test]
fn wrongly_typed_and_missing_fields_are_named() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod}\nspec:\n  containers:\n\
        \x20 - {name: sidecar, ports: [{containerPort: 9090}]}\n  - name: web\n    ports: [{containerPort: 80}, {containerPort: eighty}]\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: svc}\nstatus: {conditions: [{type: Ready, status: 'True'}]}\n\
        ---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs, labels: [oops]}\n";
    let m = parse("pods.yaml", text);
    assert!(m.pods.is_empty() && m.services.is_empty() && m.owners.is_empty());
    let err = &m.errors[0];
    assert_eq!(err.field.as_deref(), Some("spec.containers[1].ports[1].containerPort"));
    assert_eq!(err.message, "invalid type: string \"eighty\", expected i32");
    assert_eq!(
        err.to_string(),
        "pods.yaml: document 1 (Pod prod/web): spec.containers[1].ports[1].containerPort: invalid type: string \"eighty\", expected i32"
    );
    // k8s-openapi defaults most required fields; metav1.Condition's timestamp is one it does not.
    assert_eq!(
        m.errors[1].to_string(),
        "pods.yaml: document 2 (Service default/svc): status.conditions[0].lastTransitionTime: missing"
    );
    assert_eq!(m.errors[2].field.as_deref(), Some("metadata.labels"));
    assert!(m.errors[2].message.starts_with("invalid type: sequence"), "{}", m.errors[2].message);
}

#[test]
fn duplicates_keep_the_later_file_in_path_order_and_warn() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "b/pod.yaml", pod("  namespace: prod\n", "web", "new"));
    write(root, "a.yaml", pod("  namespace: prod\n", "web", "old"));
    write(root, "c.yaml", pod("  namespace: staging\n", "web", "other-namespace"));
    let m = load_dir(root).unwrap();
    assert_eq!(pod_names(&m), ["prod/web", "staging/web"]);
    assert_eq!(m.pods[0].spec.as_ref().unwrap().containers[0].image.as_deref(), Some("new"));
    let (a, b) = (root.join("a.yaml").display().to_string(), root.join("b/pod.yaml").display().to_string());
    assert_eq!(m.warnings, [format!("duplicate Pod prod/web: {b} document 1 replaces {a} document 1")]);
}

#[test]
fn namespaced_objects_default_to_the_default_namespace() {
    let text = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\napiVersion: networking.k8s.io/v1\n\
         kind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {{podSelector: {{}}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: n}}\n",
        pod("", "p", "img")
    );
    let m = parse("defaults.yaml", &text);
    assert_eq!(pod_names(&m), ["default/p"]);
    assert_eq!(m.services[0].metadata.namespace.as_deref(), Some("default"));
    assert_eq!(m.policies[0].metadata.namespace.as_deref(), Some("default"));
    assert_eq!(m.namespaces[0].metadata.namespace, None);
}

#[test]
fn owner_chain_metadata_is_kept() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod, uid: d-1, labels: {app: web}}\n\
        spec: {replicas: 2, selector: {matchLabels: {app: web}}, template: {spec: {containers: [{name: c}]}}}\n\
        ---\napiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: web-7d9\n  namespace: prod\n  uid: rs-1\n  ownerReferences:\n\
        \x20 - {apiVersion: apps/v1, kind: Deployment, name: web, uid: d-1, controller: true}\n\
        ---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly, uid: cj-1}\nspec: {schedule: '@daily', bogus: [1]}\n";
    let m = parse("apps.yaml", text);
    assert_eq!(m.errors, Vec::<ManifestError>::new());
    let kinds: Vec<_> = m.owners.iter().map(|o| (o.kind.as_str(), o.namespace.as_str(), o.name.as_str())).collect();
    assert_eq!(
        kinds,
        [("Deployment", "prod", "web"), ("ReplicaSet", "prod", "web-7d9"), ("CronJob", "default", "nightly")]
    );
    assert_eq!(m.owners[0].labels["app"], "web");
    assert_eq!(m.owners[0].api_version, "apps/v1");
    let owner = &m.owners[1].owner_references[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Deployment", "web", "d-1"));
    assert_eq!((owner.controller, m.owners[1].uid.as_deref()), (Some(true), Some("rs-1")));
}

#[test]
fn empty_documents_are_ignored_but_still_counted_for_messages() {
    let text = format!("---\n---\n# only a comment\n---\n{}---\n---\n42\n", pod("", "p", "img"));
    let m = parse("sparse.yaml", &text);
    assert_eq!(pod_names(&m), ["default/p"]);
    assert_eq!(m.errors.len(), 1);
    assert_eq!(m.errors[0].to_string(), "sparse.yaml: document 5: invalid type: integer `42`, expected a map");
}

#[test]
fn garbage_files_are_reported_and_the_load_continues() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "binary.yaml", [0x7f, 0x45, 0x4c, 0x46, 0xff, 0xfe, 0x00, 0x9f]);
    write(root, "noise.yml", "\u{1}\u{2}}}{{ : : [");
    write(root, "words.yaml", "just some words");
    write(root, "ok.yaml", pod("", "survivor", "img"));
    let m = load_dir(root).unwrap();
    assert_eq!(pod_names(&m), ["default/survivor"]);
    let files: Vec<_> = m.errors.iter().map(|e| Path::new(&e.file).file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(files, ["binary.yaml", "noise.yml", "words.yaml"]);
    assert_eq!((m.errors[0].document, m.errors[0].message.as_str()), (None, "not UTF-8 text (bad byte at offset 4)"));
    assert!(m.errors[1].message.starts_with("invalid YAML"), "{}", m.errors[1].message);
    assert_eq!(m.errors[2].message, "invalid type: string \"just some words\", expected a map");
}

#[test]
fn other_versions_of_kept_kinds_and_nameless_objects_are_errors() {
    let text = "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old, namespace: x}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n---\nkind: Pod\nmetadata: {name: p}\n";
    let m = parse("old.yaml", text);
    let got: Vec<_> = m.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "old.yaml: document 1 (NetworkPolicy x/old): apiVersion: networking.k8s.io/v1beta1 is not supported for \
             NetworkPolicy, expected networking.k8s.io/v1",
            "old.yaml: document 2 (Service x/<unnamed>): metadata.name: missing",
            "old.yaml: document 3: apiVersion: missing",
        ]
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - &base {name: a, image: shared}\n  - <<: *base\n    name: b\n";
    let m = parse("anchors.yaml", text);
    let containers = &m.pods[0].spec.as_ref().unwrap().containers;
    let got: Vec<_> = containers.iter().map(|c| (c.name.as_str(), c.image.as_deref().unwrap())).collect();
    assert_eq!(got, [("a", "shared"), ("b", "shared")]);
}

#[test]
fn bounds_and_an_unreadable_root_are_fatal() {
    let missing = load_dir(Path::new("/nonexistent/podlens-manifests")).unwrap_err();
    assert!(matches!(missing, LoadError::ReadDir { .. }), "{missing}");

    let dir = tempfile::tempdir().unwrap();
    let deep: String = (0..=MAX_DEPTH).map(|i| format!("d{i}/")).collect();
    write(dir.path(), &format!("{deep}pod.yaml"), pod("", "deep", "img"));
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::TooDeep { path } if path.ends_with(format!("d{MAX_DEPTH}"))), "{err}");

    let dir = tempfile::tempdir().unwrap();
    fs::File::create(dir.path().join("huge.yaml")).unwrap().set_len(16 * 1024 * 1024 + 1).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, LoadError::FileTooLarge { size: 16_777_217, path } if path.ends_with("huge.yaml")), "{err}");

    let dir = tempfile::tempdir().unwrap();
    (0..=MAX_FILES).for_each(|i| write(dir.path(), &format!("f{i}.yaml"), ""));
    assert!(matches!(load_dir(dir.path()).unwrap_err(), LoadError::TooManyFiles { .. }));
}
