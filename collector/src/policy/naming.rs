//! How findings name their ends and themselves: peers, workloads,
//! protocols, and the stable ids derived from those names.

use std::net::IpAddr;

use super::{
    classify::{ObjectId, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
    owners::Workload,
};

/// The other end of a finding's flows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerDesc {
    /// Every peer: an unprotected pod's finding, whose peers are listed apart.
    Any,
    Workload(Workload),
    /// (namespace, name) of the service whose backends have no single workload.
    Service(ObjectId),
    Fqdn(String),
    /// An external address, or the network it was grouped into.
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
    /// An external end whose address is not known.
    External,
}

impl PeerDesc {
    /// The canonical spelling ids are derived from.
    pub fn canonical(&self) -> String {
        match self {
            PeerDesc::Any => "any".to_owned(),
            PeerDesc::Workload(w) => format!("workload:{}", workload_key(w)),
            PeerDesc::Service((ns, name)) => format!("service:{ns}/{name}"),
            PeerDesc::Fqdn(name) => format!("fqdn:{name}"),
            PeerDesc::Cidr { network, prefix } => format!("cidr:{network}/{prefix}"),
            PeerDesc::External => "external".to_owned(),
        }
    }
}

/// A pod without a known workload stands for itself.
pub fn pod_workload((namespace, name): &ObjectId) -> Workload {
    Workload { namespace: namespace.clone(), kind: "Pod".to_owned(), name: name.clone() }
}

pub fn workload_key(w: &Workload) -> String {
    format!("{}/{}/{}", w.namespace, w.kind, w.name)
}

/// Lowercase, without the root's trailing dot.
pub fn normalize_fqdn(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        IPPROTO_SCTP => "sctp".to_owned(),
        other => other.to_string(),
    }
}

/// 64-bit FNV-1a of `key`, as 16 hex digits.
pub fn stable_id(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
