//! Conversion of Kubernetes Pod objects (API watch or inventory file) into
//! [`PodMeta`].

use std::{net::IpAddr, time::SystemTime};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};

use crate::identity::{
    pods::{ContainerMeta, PodMeta},
    ContainerRuntime, QosClass,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("pod {pod} has no metadata.uid")]
    MissingUid { pod: String },
    #[error("pod {pod}: status.podIPs has an invalid IP {ip:?}")]
    BadIp { pod: String, ip: String },
    #[error("pod {pod}: containerID {id:?} is not <runtime>://<id>")]
    BadContainerId { pod: String, id: String },
}

/// Converts a Pod; an invalid field is an error naming the pod and the field.
pub fn pod_meta(pod: &Pod) -> Result<PodMeta, PodError> {
    let md = &pod.metadata;
    let namespace = md.namespace.clone().unwrap_or_else(|| "default".to_string());
    let name = md.name.clone().unwrap_or_default();
    let display = format!("{namespace}/{name}");
    let uid = md.uid.clone().filter(|u| !u.is_empty()).ok_or_else(|| PodError::MissingUid { pod: display.clone() })?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| p.ip.clone());
    let single = status.and_then(|s| s.pod_ip.clone());
    for raw in listed.chain(single) {
        let ip: IpAddr = raw.parse().map_err(|_| PodError::BadIp { pod: display.clone(), ip: raw.clone() })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }

    let mut containers = Vec::new();
    if let Some(s) = status {
        let all = [&s.container_statuses, &s.init_container_statuses, &s.ephemeral_container_statuses];
        for cs in all.into_iter().flatten().flatten() {
            let Some(raw) = cs.container_id.as_deref().filter(|id| !id.is_empty()) else {
                continue;
            };
            let (scheme, id) = raw
                .split_once("://")
                .ok_or_else(|| PodError::BadContainerId { pod: display.clone(), id: raw.to_string() })?;
            containers.push(ContainerMeta {
                id: id.to_ascii_lowercase(),
                name: cs.name.clone(),
                runtime: ContainerRuntime::from_scheme(scheme),
            });
        }
    }

    Ok(PodMeta {
        uid,
        namespace,
        name,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        qos: status.and_then(|s| s.qos_class.as_deref()).map(QosClass::from_status).unwrap_or_default(),
        containers,
        created: md.creation_timestamp.as_ref().map(time),
        deleted: md.deletion_timestamp.as_ref().map(time),
    })
}

fn time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}
