//! Loading and attaching the kernel programs (aya), and access to their maps.

pub mod batch;
pub mod clock;
pub mod events;
pub mod flow_maps;
pub mod sched;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, TestRun, TestRunOptions,
    },
    Btf, Ebpf, EbpfLoader,
};
use podlens_agent_ebpf::{globals, maps, programs, ClockSample, Counter, DNS_PORTS};

use self::flow_maps::{FlowMapError, FlowMaps};

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries per flow map (there are two).
    pub flow_map_entries: u32,
    /// Size of the events ring buffer in bytes (power of two, multiple of the page size).
    pub events_ring_bytes: u32,
    /// Ports whose TCP/UDP payload is captured as DNS (0: unused slot; all 0: no capture).
    pub dns_ports: [u16; DNS_PORTS],
    /// Size of the DNS ring buffer in bytes (power of two, multiple of the page size).
    pub dns_ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_map_entries: podlens_agent_ebpf::FLOW_MAP_ENTRIES,
            events_ring_bytes: 256 * 1024,
            dns_ports: [53, 0, 0, 0],
            dns_ring_bytes: 4 << 20,
        }
    }
}

const PERMISSION_HINT: &str =
    "run as root, or grant the agent CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (see README, Capabilities)";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {source}; {hint}")]
    Object { source: Box<aya::EbpfError>, hint: &'static str },
    #[error("program {name} missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("loading program {name}: {source}; {hint}")]
    Program { name: &'static str, source: Box<ProgramError>, hint: &'static str },
    #[error("reading kernel BTF from /sys/kernel/btf/vmlinux: {0}")]
    Btf(aya::BtfError),
    #[error(transparent)]
    FlowMaps(#[from] FlowMapError),
    #[error("opening cgroup2 root {path}: {source}")]
    CgroupRoot { path: PathBuf, source: std::io::Error },
    #[error("running {name} with BPF_PROG_TEST_RUN (sampling the kernel clocks): {source}")]
    TestRun { name: &'static str, source: Box<ProgramError> },
    #[error("attaching {name} to {path}: {source}; {hint}")]
    Attach { name: &'static str, path: PathBuf, source: Box<ProgramError>, hint: &'static str },
}

pub(crate) fn hint_for(e: &dyn std::error::Error) -> &'static str {
    let text = format!("{e} {:?}", e.source());
    if text.contains("Operation not permitted") || text.contains("EPERM") || text.contains("os error 1)") {
        PERMISSION_HINT
    } else {
        "see README, Troubleshooting"
    }
}

/// The loaded object: programs verified, maps created, nothing attached yet.
pub struct Kernel {
    ebpf: Ebpf,
    pub flow_maps: FlowMaps,
    events: Option<RingBuf<MapData>>,
    dns_events: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    clock_samples: Array<MapData, ClockSample>,
}

/// Which optional parts came up, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// cgroup mkdir/rmdir events (else identity relies on rescans).
    pub cgroup_events: bool,
}

impl Kernel {
    /// Loads and verifies every program and creates the maps.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, opts.events_ring_bytes)
            .map_max_entries(maps::DNS_EVENTS, opts.dns_ring_bytes)
            .override_global(globals::DNS_PORTS, &opts.dns_ports, true)
            .map_max_entries(maps::FLOWS[0], opts.flow_map_entries)
            .map_max_entries(maps::FLOWS[1], opts.flow_map_entries)
            .load(podlens_agent_ebpf::podlens_object())
            .map_err(|source| {
                let hint = hint_for(&source);
                LoadError::Object { source: Box::new(source), hint }
            })?;

        for name in [programs::FLOW_EGRESS, programs::FLOW_INGRESS, programs::CLOCK_SAMPLE] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|source| program_error(name, source))?;
        }
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        for (name, tp) in [(programs::CGROUP_MKDIR, "cgroup_mkdir"), (programs::CGROUP_RMDIR, "cgroup_rmdir")] {
            let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
            prog.load(tp, &btf).map_err(|source| program_error(name, source))?;
        }

        let flows = [take_map(&mut ebpf, maps::FLOWS[0])?, take_map(&mut ebpf, maps::FLOWS[1])?];
        let active = take_map(&mut ebpf, maps::FLOW_ACTIVE)?;
        let barrier = take_map(&mut ebpf, maps::DRAIN_BARRIER)?;
        let flow_maps = FlowMaps::new(flows, active, barrier)?;
        let events = take_map(&mut ebpf, maps::EVENTS)?;
        let dns_events = take_map(&mut ebpf, maps::DNS_EVENTS)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let clock_samples = take_map(&mut ebpf, maps::CLOCK_SAMPLES)?;
        Ok(Self { ebpf, flow_maps, events: Some(events), dns_events: Some(dns_events), counters, clock_samples })
    }

    /// Attaches the flow programs to the cgroup2 root in multi mode (other
    /// programs there keep running) and the cgroup event programs. The flow
    /// programs are required; cgroup events are optional.
    pub fn attach(&mut self, cgroup_root: &Path) -> Result<Features, LoadError> {
        let dir = File::open(cgroup_root)
            .map_err(|source| LoadError::CgroupRoot { path: cgroup_root.to_path_buf(), source })?;
        for (name, kind) in [
            (programs::FLOW_EGRESS, CgroupSkbAttachType::Egress),
            (programs::FLOW_INGRESS, CgroupSkbAttachType::Ingress),
        ] {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            // On >= 5.7 aya attaches with a BPF link, which the kernel always
            // runs in multi mode and which rejects any flag (EINVAL): "Single"
            // only means "no flags" here. Others' programs keep running.
            prog.attach(&dir, kind, CgroupAttachMode::Single).map_err(|source| {
                let hint = hint_for(&source);
                LoadError::Attach { name, path: cgroup_root.to_path_buf(), source: Box::new(source), hint }
            })?;
        }
        let mut features = Features { cgroup_events: true };
        for name in [programs::CGROUP_MKDIR, programs::CGROUP_RMDIR] {
            let prog: &mut BtfTracePoint = program(&mut self.ebpf, name)?;
            if let Err(e) = prog.attach() {
                tracing::warn!(program = name, error = %e, "cgroup events unavailable; identity falls back to rescans");
                features.cgroup_events = false;
            }
        }
        Ok(features)
    }

    /// Jiffies and the monotonic clock, read together by the kernel.
    pub fn clock_sample(&mut self) -> Result<ClockSample, LoadError> {
        let name = programs::CLOCK_SAMPLE;
        let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
        // Any frame will do: the program only reads the clocks.
        let frame = [0u8; 64];
        prog.test_run(TestRunOptions { data_in: Some(&frame), ..Default::default() })
            .map_err(|source| LoadError::TestRun { name, source: Box::new(source) })?;
        self.clock_samples.get(&0, 0).map_err(|source| LoadError::Map { name: maps::CLOCK_SAMPLES, source })
    }

    /// The events ring buffer, for the one reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The DNS ring buffer, for the one reader.
    pub fn take_dns_events(&mut self) -> Option<RingBuf<MapData>> {
        self.dns_events.take()
    }

    /// A loaded program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        self.ebpf.program_mut(name)
    }

    /// Every counter summed over CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, aya::maps::MapError> {
        Counter::ALL.iter().map(|&c| Ok((c, self.counters.get(&(c as u32), 0)?.iter().sum()))).collect()
    }
}

pub(crate) fn program_error(name: &'static str, source: ProgramError) -> LoadError {
    let hint = hint_for(&source);
    LoadError::Program { name, source: Box::new(source), hint }
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
    prog.try_into().map_err(|source| LoadError::Program {
        name,
        source: Box::new(source),
        hint: "object and agent out of sync",
    })
}

pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap { name })?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}
