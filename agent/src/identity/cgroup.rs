//! What a cgroup path says about its owner: a pod (and container), a host unit,
//! or a kubepods path in a layout we do not understand.
//!
//! Handles both kubelet cgroup drivers and the three runtimes' naming:
//!
//! ```text
//! systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//!           (also crio-<id>.scope, docker-<id>.scope; Guaranteed pods sit directly in kubepods.slice;
//!            kind/k3s nest the tree under e.g. kubelet.slice/kubelet-kubepods.slice)
//! cgroupfs: kubepods/burstable/pod<uid>/<id>   (crio-<id> for CRI-O)
//! ```
//!
//! Pure string logic: no filesystem access, so it is tested on recorded paths.

use crate::identity::{ContainerRuntime, QosClass};

/// The owner of a cgroup, derived from its path below the cgroup2 root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOwner {
    /// A pod's cgroup, or a container (or a cgroup nested in one) inside it.
    Pod(PodCgroup),
    /// Anything outside kubepods: a systemd unit or slice, a user session, the root.
    Host {
        /// Path without the leading '/', e.g. "system.slice/sshd.service"; "" is the root.
        unit: String,
    },
    /// Under a kubepods tree but not in a layout we recognise. Attributed to the raw path.
    UnknownLayout {
        /// Path without the leading '/'.
        path: String,
    },
}

/// Identity carried by a pod's cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// metadata.uid, with dashes (the systemd driver writes them as underscores).
    pub uid: String,
    /// From the QoS slice the pod sits in.
    pub qos: QosClass,
    /// The container, when the path goes below the pod level.
    pub container: Option<ContainerCgroup>,
}

/// A container cgroup inside a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// Container id as the runtime reports it (lowercase hex).
    pub id: String,
    /// Known from the name prefix (cri-containerd-, crio-, docker-); cgroupfs
    /// containerd and docker both use the bare id, so it is `Unknown` there.
    pub runtime: ContainerRuntime,
}

/// Classifies a cgroup path (absolute or relative to the cgroup2 root).
pub fn parse_cgroup_path(path: &str) -> CgroupOwner {
    let trimmed = path.trim_matches('/');
    let segments: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();

    let Some(kube_idx) = segments.iter().position(|s| is_kubepods_root(s)) else {
        return CgroupOwner::Host { unit: trimmed.to_string() };
    };
    let unknown = || CgroupOwner::UnknownLayout { path: trimmed.to_string() };

    let rest = &segments[kube_idx + 1..];
    // The kubepods cgroup itself, or a QoS slice with no pod: node-level, not a pod.
    let mut qos = QosClass::Guaranteed;
    let mut i = 0;
    if let Some(level) = rest.first().and_then(|s| qos_level(s)) {
        qos = level;
        i = 1;
    }
    let Some(pod_segment) = rest.get(i) else {
        return CgroupOwner::Host { unit: trimmed.to_string() };
    };
    let Some(uid) = pod_uid(pod_segment) else {
        return unknown();
    };
    let container = match rest.get(i + 1) {
        None => None,
        Some(segment) => match container_id(segment) {
            Some(c) => c,
            None => return unknown(),
        },
    };
    CgroupOwner::Pod(PodCgroup { uid, qos, container })
}

/// "kubepods.slice", "kubepods", or a nested systemd form such as
/// "kubelet-kubepods.slice" (kind, k3s).
fn is_kubepods_root(segment: &str) -> bool {
    segment == "kubepods"
        || segment == "kubepods.slice"
        || (segment.ends_with("-kubepods.slice") && !segment.contains("-pod"))
}

fn qos_level(segment: &str) -> Option<QosClass> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let last = name.rsplit('-').next().unwrap_or(name);
    match last {
        "burstable" => Some(QosClass::Burstable),
        "besteffort" => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `...-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        let idx = slice.rfind("-pod")?;
        &slice[idx + 4..]
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    valid_uid(&uid).then_some(uid)
}

/// A UUID (36 chars with dashes) or a static pod's 32-hex config hash.
fn valid_uid(uid: &str) -> bool {
    let hex_digits = uid.chars().filter(|c| c.is_ascii_hexdigit()).count();
    let dashes = uid.chars().filter(|&c| c == '-').count();
    hex_digits + dashes == uid.len() && hex_digits == 32 && (dashes == 0 || (dashes == 4 && uuid_dashes_in_place(uid)))
}

fn uuid_dashes_in_place(uid: &str) -> bool {
    uid.len() == 36 && [8, 13, 18, 23].iter().all(|&i| uid.as_bytes()[i] == b'-')
}

/// Parses a container segment. `Some(None)` means a runtime helper cgroup that
/// belongs to the pod but no container (CRI-O's conmon).
fn container_id(segment: &str) -> Option<Option<ContainerCgroup>> {
    let (name, scoped) = match segment.strip_suffix(".scope") {
        Some(n) => (n, true),
        None => (segment, false),
    };
    if name.starts_with("crio-conmon-") {
        return Some(None);
    }
    let prefixes = [
        ("cri-containerd-", ContainerRuntime::Containerd),
        ("crio-", ContainerRuntime::CriO),
        ("docker-", ContainerRuntime::Docker),
    ];
    let (id, runtime) = prefixes
        .iter()
        .find_map(|(p, rt)| name.strip_prefix(p).map(|id| (id, *rt)))
        .unwrap_or((name, ContainerRuntime::Unknown));
    if scoped && runtime == ContainerRuntime::Unknown {
        return None;
    }
    let valid = (12..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| Some(ContainerCgroup { id: id.to_ascii_lowercase(), runtime }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1b5d0e-8a2c-4f6e-9b7d-1c2e3f4a5b6c";
    const UID_: &str = "3f1b5d0e_8a2c_4f6e_9b7d_1c2e3f4a5b6c";
    const CID: &str = "0f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899a";

    fn pod(uid: &str, qos: QosClass, c: Option<(&str, ContainerRuntime)>) -> CgroupOwner {
        CgroupOwner::Pod(PodCgroup {
            uid: uid.to_string(),
            qos,
            container: c.map(|(id, runtime)| ContainerCgroup { id: id.to_string(), runtime }),
        })
    }

    #[test]
    fn systemd_driver_all_runtimes_and_qos() {
        use ContainerRuntime::*;
        let cases = [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, QosClass::Burstable, Some((CID, Containerd))),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"),
                pod(UID, QosClass::BestEffort, Some((CID, CriO))),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"),
                pod(UID, QosClass::Guaranteed, Some((CID, Docker))),
            ),
            (
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
                pod(UID, QosClass::Burstable, None),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope"),
                pod(UID, QosClass::Burstable, None),
            ),
            // kind / k3s nest the kubepods tree under another slice.
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, QosClass::BestEffort, Some((CID, Containerd))),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn cgroupfs_driver_all_runtimes_and_qos() {
        use ContainerRuntime::*;
        let cases = [
            (format!("/kubepods/burstable/pod{UID}/{CID}"), pod(UID, QosClass::Burstable, Some((CID, Unknown)))),
            (format!("/kubepods/besteffort/pod{UID}/crio-{CID}"), pod(UID, QosClass::BestEffort, Some((CID, CriO)))),
            (format!("/kubepods/pod{UID}/{CID}"), pod(UID, QosClass::Guaranteed, Some((CID, Unknown)))),
            (format!("/kubepods/pod{UID}"), pod(UID, QosClass::Guaranteed, None)),
            // docker's short ids and upper case from older tooling
            (
                format!("/kubepods/burstable/pod{UID}/ABCDEF012345"),
                pod(UID, QosClass::Burstable, Some(("abcdef012345", Unknown))),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn static_pod_uid_is_a_config_hash() {
        let hash = "8c8c1b9d2d5bb0eae1e2f3a4b5c6d7e8";
        assert_eq!(parse_cgroup_path(&format!("/kubepods/burstable/pod{hash}")), pod(hash, QosClass::Burstable, None));
    }

    #[test]
    fn host_units_are_kept_not_dropped() {
        for (path, unit) in [
            ("/system.slice/sshd.service", "system.slice/sshd.service"),
            ("/user.slice/user-1000.slice/session-3.scope", "user.slice/user-1000.slice/session-3.scope"),
            ("/", ""),
            ("", ""),
            ("/kubepods.slice", "kubepods.slice"),
            ("/kubepods.slice/kubepods-burstable.slice", "kubepods.slice/kubepods-burstable.slice"),
            ("/kubepods/besteffort", "kubepods/besteffort"),
            // a pod-like name outside kubepods is just a host cgroup
            (&format!("/system.slice/pod{UID}"), &format!("system.slice/pod{UID}")),
        ] {
            assert_eq!(parse_cgroup_path(path), CgroupOwner::Host { unit: unit.to_string() }, "{path}");
        }
    }

    #[test]
    fn garbage_under_kubepods_is_unknown_layout() {
        for path in [
            "/kubepods/burstable/podnot-a-uid",
            "/kubepods/burstable/pod",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podXYZ.slice",
            "/kubepods.slice/kubepods-burstable.slice/weird.slice",
            &format!("/kubepods/burstable/pod{UID}/not-hex-at-all"),
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice/mystery-{CID}.scope"),
            &format!("/kubepods/pod{UID}/{}", &CID[..8]),
            &format!("/kubepods/pod{}", &UID[..20]),
            &format!("/kubepods/pod{}-", UID),
            "/kubepods/burstable/pod3f1b5d0e8a2c-4f6e-9b7d-1c2e3f4a5b6c00",
        ] {
            assert_eq!(
                parse_cgroup_path(path),
                CgroupOwner::UnknownLayout { path: path.trim_matches('/').to_string() },
                "{path}"
            );
        }
    }

    #[test]
    fn nested_cgroup_inside_a_container_belongs_to_the_container() {
        let path = format!("/kubepods/burstable/pod{UID}/{CID}/init.scope");
        assert_eq!(parse_cgroup_path(&path), pod(UID, QosClass::Burstable, Some((CID, ContainerRuntime::Unknown))));
    }
}
