//! What a NetworkPolicy rule can select: pods and namespaces by label
//! selector, addresses by CIDR block, ports by number, range or name. All are
//! checked once when a policy is indexed so that matching itself cannot fail.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::eval::{Endpoint, Protocol};

pub type Labels = BTreeMap<String, String>;

/// Why a label selector was rejected; the apiserver's validation rejects the
/// same selectors, so these only come from hand-written or offline objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: unknown operator {operator:?}")]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    ValuesRequired { index: usize, operator: &'static str },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    ValuesForbidden { index: usize, operator: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // NotIn also holds when the key is absent, as in apimachinery.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated `metav1.LabelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
}

impl Selector {
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let labels = sel.match_labels.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut requirements = Vec::new();
        for (index, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let key = expr.key.clone();
            let values = expr.values.clone().unwrap_or_default();
            let with_values = |operator: &'static str| {
                if values.is_empty() {
                    return Err(SelectorError::ValuesRequired { index, operator });
                }
                Ok(values.clone())
            };
            let without_values = |operator: &'static str| {
                if !values.is_empty() {
                    return Err(SelectorError::ValuesForbidden { index, operator });
                }
                Ok(())
            };
            requirements.push(match expr.operator.as_str() {
                "In" => Requirement::In(key, with_values("In")?),
                "NotIn" => Requirement::NotIn(key, with_values("NotIn")?),
                "Exists" => without_values("Exists").map(|()| Requirement::Exists(key))?,
                "DoesNotExist" => without_values("DoesNotExist").map(|()| Requirement::DoesNotExist(key))?,
                other => return Err(SelectorError::UnknownOperator { index, operator: other.to_owned() }),
            });
        }
        Ok(Selector { labels, requirements })
    }

    /// True for `{}`, which selects everything in its scope.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) && self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an address/prefix-length CIDR")]
    Syntax(String),
    #[error("{0:?} has a prefix length longer than its address")]
    PrefixTooLong(String),
    #[error("except {except:?} is not a strict subset of cidr {cidr:?}")]
    ExceptOutside { cidr: String, except: String },
}

/// An IPv4 or IPv6 network. Host bits are cleared on parse, as Go's
/// `net.ParseCIDR` (used by the apiserver) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        // u8::from_str accepts a leading '+', which no CIDR parser does.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::PrefixTooLong(s.to_owned()));
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
        };
        Ok(Cidr { network, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// Addresses of the other family never match: 0.0.0.0/0 does not admit
    /// IPv6 traffic, as in every CNI's reading of the spec.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask_v4(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask_v6(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    fn strictly_contains(&self, other: &Cidr) -> bool {
        other.prefix > self.prefix && self.contains(other.network)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// `ipBlock`: the CIDR minus its exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressBlock {
    cidr: Cidr,
    except: Vec<Cidr>,
}

impl AddressBlock {
    /// On error, returns the field (`cidr` or `except[i]`) that is wrong.
    pub fn compile(block: &IPBlock) -> Result<Self, (String, CidrError)> {
        let cidr = Cidr::parse(&block.cidr).map_err(|e| ("cidr".to_owned(), e))?;
        let mut except = Vec::new();
        for (i, s) in block.except.iter().flatten().enumerate() {
            let field = || format!("except[{i}]");
            let e = Cidr::parse(s).map_err(|e| (field(), e))?;
            if !cidr.strictly_contains(&e) {
                return Err((field(), CidrError::ExceptOutside { cidr: block.cidr.clone(), except: s.clone() }));
            }
            except.push(e);
        }
        Ok(AddressBlock { cidr, except })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }

    /// 0.0.0.0/0 or ::/0: the whole address family, exceptions or not.
    pub fn is_everything(&self) -> bool {
        self.cidr.prefix == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
    Protocol(String),
    #[error("port {0} is outside 1-65535")]
    Port(i32),
    #[error("named port {0:?} must contain a letter")]
    Name(String),
    #[error("endPort {0} is outside 1-65535")]
    EndPort(i32),
    #[error("endPort {end} is below port {port}")]
    EndBelowPort { port: u16, end: u16 },
    #[error("endPort needs a numeric port")]
    EndPortNeedsNumber,
}

impl PortError {
    pub(crate) fn field(&self) -> &'static str {
        match self {
            PortError::Protocol(_) => "protocol",
            PortError::Port(_) | PortError::Name(_) => "port",
            PortError::EndPort(_) | PortError::EndBelowPort { .. } | PortError::EndPortNeedsNumber => "endPort",
        }
    }
}

#[derive(Debug, Clone)]
enum PortSpec {
    Any,
    Range(u16, u16),
    Named(String),
}

#[derive(Debug, Clone)]
pub(crate) struct PortMatch {
    protocol: Protocol,
    port: PortSpec,
}

impl PortMatch {
    pub(crate) fn compile(p: &NetworkPolicyPort) -> Result<Self, PortError> {
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::from_k8s(s).ok_or_else(|| PortError::Protocol(s.to_owned()))?,
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortSpec::Any,
            (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => return Err(PortError::EndPortNeedsNumber),
            (Some(IntOrString::Int(n)), end) => {
                let start = port_number(*n).ok_or(PortError::Port(*n))?;
                let end = match end {
                    None => start,
                    Some(e) => port_number(e).ok_or(PortError::EndPort(e))?,
                };
                if end < start {
                    return Err(PortError::EndBelowPort { port: start, end });
                }
                PortSpec::Range(start, end)
            }
            // IANA_SVC_NAME needs a letter; "80" as a string is no name.
            (Some(IntOrString::String(name)), None) if name.bytes().any(|b| b.is_ascii_alphabetic()) => {
                PortSpec::Named(name.clone())
            }
            (Some(IntOrString::String(name)), None) => return Err(PortError::Name(name.clone())),
        };
        Ok(PortMatch { protocol, port })
    }

    /// `dest` is where the connection goes: named ports are the destination
    /// pod's, so they never match outside the cluster.
    pub(crate) fn matches(&self, port: u16, protocol: Protocol, dest: &Endpoint) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match &self.port {
            PortSpec::Any => true,
            PortSpec::Range(start, end) => (*start..=*end).contains(&port),
            PortSpec::Named(name) => match dest {
                Endpoint::Pod(pod) => {
                    pod.container_ports().iter().any(|p| p.name == *name && p.protocol == protocol && p.port == port)
                }
                Endpoint::External(_) => false,
            },
        }
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}
