//! podlens node agent.
//!
//! Kernel programs (agent-ebpf) count every packet per socket-owning cgroup;
//! this crate loads them ([`ebpf`]), drains and merges their maps ([`flows`],
//! [`pipeline`]), resolves cgroups and peers to pods ([`identity`]) and hands
//! batches to a [`pipeline::Sink`]: the embedded collector in standalone mode.

pub mod admin;
pub mod config;
pub mod dns;
pub mod ebpf;
pub mod export;
pub mod flows;
pub mod identity;
pub mod losses;
pub mod noisy;
pub mod pipeline;
pub mod preflight;
pub mod pressure;
pub mod standalone;
