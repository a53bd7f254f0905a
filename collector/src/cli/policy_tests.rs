use super::*;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: web, image: nginx}]}
  status: {podIP: 10.0.0.10, podIPs: [{ip: 10.0.0.10}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: api, namespace: shop, labels: {app: api}}
  spec: {containers: [{name: api, image: api, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.0.11, podIPs: [{ip: 10.0.0.11}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: ops, labels: {app: debug}}
  spec: {containers: [{name: sh, image: busybox}]}
  status: {podIP: 10.0.0.12, podIPs: [{ip: 10.0.0.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 443}]
"#;

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("cluster.yaml"), MANIFESTS).unwrap();
    std::fs::write(d.path().join("broken.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: shop}\nspec: {podSelecter: {}}\n").unwrap();
    d
}

fn args(d: &tempfile::TempDir, from: &str, to: &str, output: &str) -> PolicyCheckArgs {
    PolicyCheckArgs { manifests: d.path().to_path_buf(), from: from.into(), to: to.into(), output: output.into() }
}

#[test]
fn allowed_connection_names_every_rule_in_both_directions() {
    let d = dir();
    let (out, permitted, errors) = check(&args(&d, "shop/web", "shop/api:8080/TCP", "json")).unwrap();
    assert!(permitted, "{out}");
    assert_eq!(errors.len(), 1, "the typo'd policy is reported, the rest loads: {errors:?}");
    assert!(errors[0].contains("broken.yaml") && errors[0].contains("podSelecter"), "{errors:?}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["egress"]["decision"], "allowed");
    assert_eq!(
        v["egress"]["rules"],
        json!([{"namespace": "shop", "policy": "web-egress", "direction": "egress", "rule_index": 0, "broad": false}])
    );
    assert_eq!(
        v["ingress"]["rules"],
        json!([{"namespace": "shop", "policy": "web-to-api", "direction": "ingress", "rule_index": 0, "broad": false}])
    );
    assert_eq!((v["port"].as_u64(), v["protocol"].as_str()), (Some(8080), Some("TCP")));
}

#[test]
fn denied_and_not_isolated_directions_and_external_ends() {
    let d = dir();
    // ops/debug is not isolated for egress; shop/api's ingress only allows shop/web
    let (out, permitted, _) = check(&args(&d, "ops/debug", "shop/api:8080", "table")).unwrap();
    assert!(!permitted);
    assert!(out.starts_with("DENIED"), "{out}");
    assert!(out.contains("EGRESS   not isolated"), "{out}");
    assert!(out.contains("INGRESS  denied: isolated by shop/default-deny, shop/web-to-api"), "{out}");
    // egress to the internet on 443 only through the broad rule; the far end has no ingress side
    let (out, permitted, _) = check(&args(&d, "shop/web", "203.0.113.7:443", "json")).unwrap();
    assert!(permitted);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["egress"]["rules"][0]["broad"], true);
    assert_eq!(v["ingress"], Value::Null);
    // UDP is not what the rule allows
    let (_, permitted, _) = check(&args(&d, "shop/web", "203.0.113.7:443/udp", "json")).unwrap();
    assert!(!permitted);
    // an external client: only the pod's ingress applies
    let (out, permitted, _) = check(&args(&d, "198.51.100.1", "shop/api:8080", "json")).unwrap();
    assert!(!permitted);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["egress"].clone(), v["ingress"]["decision"].clone()), (Value::Null, json!("denied")));
}

#[test]
fn bad_arguments_name_the_flag() {
    let d = dir();
    for (from, to, want) in [
        ("shop", "shop/api:80", "--from \"shop\""),
        ("shop/web", "shop/api", "--to \"shop/api\""),
        ("shop/web", "shop/api:99999", "not 1..65535"),
        ("shop/web", "shop/nope:80", "no pod shop/nope"),
        ("shop/ghost", "shop/api:80", "no pod shop/ghost"),
    ] {
        let err = check(&args(&d, from, to, "table")).unwrap_err();
        assert!(format!("{err:#}").contains(want), "{from} {to}: {err:#}");
    }
    let err = check(&PolicyCheckArgs { manifests: "/nonexistent-podlens".into(), ..args(&d, "a/b", "c/d:1", "table") })
        .unwrap_err();
    assert!(format!("{err:#}").contains("--manifests /nonexistent-podlens"), "{err:#}");
}

#[test]
fn destinations_parse_with_ipv6_and_protocols() {
    assert_eq!(parse_to("[fd00::1]:53/udp").unwrap(), (End::Ip("fd00::1".parse().unwrap()), 53, Protocol::Udp));
    assert_eq!(parse_to("10.0.0.1:80").unwrap(), (End::Ip("10.0.0.1".parse().unwrap()), 80, Protocol::Tcp));
    assert_eq!(
        parse_to("ns/pod:9000/SCTP").unwrap(),
        (End::Pod { namespace: "ns".into(), name: "pod".into() }, 9000, Protocol::Sctp)
    );
}
