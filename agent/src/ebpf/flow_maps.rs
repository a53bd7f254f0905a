//! The double-buffered flow maps and their lossless drain.
//!
//! The programs write into `flows_0` or `flows_1` as `flow_active` says.
//! [`FlowMaps::drain`] points `flow_active` at the idle map, then updates
//! `drain_barrier`, an array-of-maps no program reads: the kernel returns from
//! that update only after synchronize_rcu(), and BPF programs run under RCU, so
//! no program that read the old index can still be writing into the old map
//! when we read it. No increment can fall between our read and our delete.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{Array, ArrayOfMaps, HashMap, IterableMap, MapData, MapError};
use podlens_agent_ebpf::{FlowKey, FlowValue};

use crate::ebpf::batch;

pub type FlowMap = HashMap<MapData, FlowKey, FlowValue>;
type Barrier = ArrayOfMaps<MapData, Array<MapData, u32>>;

/// Entries fetched per batch syscall.
const BATCH: usize = 4096;

pub struct FlowMaps {
    maps: [FlowMap; 2],
    active_index: Array<MapData, u32>,
    barrier: Barrier,
    barrier_inner: Array<MapData, u32>,
    active: u32,
    batch_supported: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowMapError {
    #[error("switching the active flow map: {0}")]
    Switch(MapError),
    #[error("waiting for in-flight programs (drain barrier): {0}")]
    Barrier(MapError),
    #[error("creating the drain barrier's inner map: {0}")]
    Create(MapError),
    #[error("draining flow map {map}: {op} failed: {message}")]
    Read { map: &'static str, op: &'static str, message: String },
}

impl FlowMaps {
    pub fn new(
        maps: [FlowMap; 2],
        mut active_index: Array<MapData, u32>,
        barrier: Barrier,
    ) -> Result<Self, FlowMapError> {
        active_index.set(0, 0, 0).map_err(FlowMapError::Switch)?;
        let barrier_inner = Array::create(1, 0).map_err(FlowMapError::Create)?;
        Ok(Self { maps, active_index, barrier, barrier_inner, active: 0, batch_supported: true })
    }

    /// Switches maps and moves every flow the replaced one held into `out`;
    /// it is empty afterwards and becomes the idle map. On an error, `out`
    /// still holds every entry that was read (and so removed) before it.
    pub fn drain(&mut self, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<(), FlowMapError> {
        let old = self.active as usize;
        let idle = 1 - self.active;
        self.active_index.set(0, idle, 0).map_err(FlowMapError::Switch)?;
        self.active = idle;
        // Returns after synchronize_rcu(): see the module comment.
        self.barrier.set(0, &self.barrier_inner, 0).map_err(FlowMapError::Barrier)?;
        let name = podlens_agent_ebpf::maps::FLOWS[old];
        if self.batch_supported {
            let fd = IterableMap::map(&self.maps[old]).fd().as_fd().as_raw_fd();
            match batch::drain_hash(fd, BATCH, out) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {
                    tracing::info!(error = %e, "batch map ops unavailable; draining per key");
                    self.batch_supported = false;
                }
                // Entries already moved into `out` are kept; the rest follow per key.
                Err(e) => tracing::warn!(map = name, error = %e, "batch drain failed; finishing per key"),
            }
        }
        drain_per_key(name, &mut self.maps[old], out)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524 /* ENOTSUPP */))
}

/// Reads every entry, then deletes what was read. A key whose delete fails
/// stays in the map and would be counted again at its next drain: that is
/// reported as an error (the kernel only fails it on a vanished key, which is
/// ignored).
fn drain_per_key(
    name: &'static str,
    map: &mut FlowMap,
    out: &mut Vec<(FlowKey, FlowValue)>,
) -> Result<(), FlowMapError> {
    let start = out.len();
    let mut read_error = None;
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(e) => {
                read_error = Some(FlowMapError::Read { map: name, op: "read", message: e.to_string() });
                break;
            }
        }
    }
    let mut delete_error = None;
    for (key, _) in &out[start..] {
        match map.remove(key) {
            Ok(()) => {}
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => delete_error = Some(FlowMapError::Read { map: name, op: "delete", message: e.to_string() }),
        }
    }
    match read_error.or(delete_error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
