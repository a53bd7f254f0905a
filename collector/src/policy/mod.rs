//! NetworkPolicy semantics (networking.k8s.io/v1) over a cluster view, for
//! `podlens policy check` and for classifying observed flows.

pub mod baseline;
pub mod classify;
pub mod coverage;
pub mod detector;
pub mod emit;
pub mod eval;
pub mod gaps;
pub mod naming;
pub mod observed;
pub mod owners;
pub mod peer;
pub mod selector;
pub mod services;
pub mod state;
pub mod suggest;
pub mod watch;
pub mod watch_kube;

#[cfg(test)]
mod classify_tests;
#[cfg(test)]
mod eval_tests;
#[cfg(test)]
mod gaps_tests;
#[cfg(test)]
mod suggest_tests;
