//! The double-buffered flow maps and their lossless drain.
//!
//! Two hash maps take turns in the single slot of the `flow_maps`
//! array-of-maps. [`FlowMaps::drain`] installs the idle map and only then reads
//! and empties the one it replaced. The kernel returns from an array-of-maps
//! update only after synchronize_rcu(), and BPF programs run under RCU, so no
//! program can still be writing into the replaced map when we read it: no
//! increment can fall between our read and our delete.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{ArrayOfMaps, HashMap, IterableMap, MapData, MapError};
use podlens_agent_ebpf::{FlowKey, FlowValue};

use crate::ebpf::batch;

type FlowMap = HashMap<MapData, FlowKey, FlowValue>;

/// Entries fetched per batch syscall.
const BATCH: usize = 4096;

pub struct FlowMaps {
    outer: ArrayOfMaps<MapData, FlowMap>,
    maps: [FlowMap; 2],
    active: usize,
    capacity: u32,
    batch_supported: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowMapError {
    #[error("creating a flow map of {entries} entries: {source}")]
    Create { entries: u32, source: MapError },
    #[error("installing the flow map in flow_maps: {0}")]
    Swap(MapError),
    #[error("reading the flow map: {0}")]
    Read(String),
}

impl FlowMaps {
    /// Creates both maps with `capacity` entries each and installs the first.
    pub fn new(mut outer: ArrayOfMaps<MapData, FlowMap>, capacity: u32) -> Result<Self, FlowMapError> {
        let create =
            || FlowMap::create(capacity, 0).map_err(|source| FlowMapError::Create { entries: capacity, source });
        let maps = [create()?, create()?];
        outer.set(0, &maps[0], 0).map_err(FlowMapError::Swap)?;
        Ok(Self { outer, maps, active: 0, capacity, batch_supported: true })
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Swaps maps and returns every flow the replaced one held; it is empty
    /// afterwards and becomes the idle map.
    pub fn drain(&mut self) -> Result<Vec<(FlowKey, FlowValue)>, FlowMapError> {
        let idle = 1 - self.active;
        // Returns after synchronize_rcu(): see the module comment.
        self.outer.set(0, &self.maps[idle], 0).map_err(FlowMapError::Swap)?;
        let old = self.active;
        self.active = idle;
        let mut out = Vec::new();
        if self.batch_supported {
            let fd = IterableMap::map(&self.maps[old]).fd().as_fd().as_raw_fd();
            match batch::drain_hash(fd, BATCH, &mut out) {
                Ok(()) => return Ok(out),
                Err(e) if unsupported(&e) => {
                    tracing::info!(error = %e, "batch map ops unavailable; draining per key");
                    self.batch_supported = false;
                }
                // Entries already moved into `out` are kept; the rest follow per key.
                Err(e) => tracing::warn!(error = %e, "batch drain failed; finishing per key"),
            }
        }
        drain_per_key(&mut self.maps[old], &mut out)?;
        Ok(out)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524 /* ENOTSUPP */))
}

fn drain_per_key(map: &mut FlowMap, out: &mut Vec<(FlowKey, FlowValue)>) -> Result<(), FlowMapError> {
    let start = out.len();
    for item in map.iter() {
        out.push(item.map_err(|e| FlowMapError::Read(e.to_string()))?);
    }
    for (key, _) in &out[start..] {
        map.remove(key).map_err(|e| FlowMapError::Read(e.to_string()))?;
    }
    Ok(())
}
