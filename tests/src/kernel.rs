//! The flow programs loaded (not attached) for BPF_PROG_TEST_RUN.

use std::collections::BTreeMap;

use aya::{
    maps::{MapData, RingBuf},
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use podlens_agent::ebpf::{events, Kernel, LoadOptions};
use podlens_agent_ebpf::{programs, Counter, FlowKey, FlowValue};

/// Offset of `gso_segs` in `struct __sk_buff` (UAPI, stable).
const SKB_GSO_SEGS: usize = 164;
const SKB_SIZE: usize = 192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Egress,
    Ingress,
}

pub struct FlowProgs {
    pub kernel: Kernel,
    pub ring: RingBuf<MapData>,
    pub dns_ring: RingBuf<MapData>,
}

impl FlowProgs {
    pub fn load(flow_map_entries: u32, events_ring_bytes: u32) -> Self {
        Self::load_with(LoadOptions { flow_map_entries, events_ring_bytes, ..Default::default() })
    }

    pub fn load_with(opts: LoadOptions) -> Self {
        crate::privileged::require_root();
        let mut kernel = Kernel::load(&opts).expect("load the eBPF object");
        let ring = kernel.take_events().expect("events ring");
        let dns_ring = kernel.take_dns_events().expect("DNS ring");
        Self { kernel, ring, dns_ring }
    }

    /// Runs the program for `dir` on an Ethernet frame; returns the verdict.
    pub fn run(&mut self, dir: Dir, frame: &[u8]) -> u32 {
        self.run_with(dir, frame, 0, 1)
    }

    /// Runs with `gso_segs` in the context, `repeat` times.
    pub fn run_with(&mut self, dir: Dir, frame: &[u8], gso_segs: u32, repeat: u32) -> u32 {
        self.try_run(dir, frame, gso_segs, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()))
    }

    pub fn try_run(
        &mut self,
        dir: Dir,
        frame: &[u8],
        gso_segs: u32,
        repeat: u32,
    ) -> Result<u32, aya::programs::ProgramError> {
        let name = match dir {
            Dir::Egress => programs::FLOW_EGRESS,
            Dir::Ingress => programs::FLOW_INGRESS,
        };
        let mut ctx = [0u8; SKB_SIZE];
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
        let prog: &mut CgroupSkb = self.kernel.program_mut(name).expect("program").try_into().expect("cgroup_skb");
        let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), repeat, ..Default::default() };
        Ok(prog.test_run(opts)?.return_value)
    }

    /// Drains the flow maps (the agent's lossless swap) into a sorted map.
    pub fn drain(&mut self) -> BTreeMap<FlowKey, FlowValue> {
        let mut out = BTreeMap::new();
        let mut entries = Vec::new();
        self.kernel.flow_maps.drain(&mut entries).expect("drain");
        for (k, v) in entries {
            assert!(out.insert(k, v).is_none(), "duplicate key from one drain: {k:?}");
        }
        out
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.kernel.counters().expect("counters").into_iter().find(|(k, _)| *k == c).map(|(_, v)| v).unwrap_or(0)
    }

    /// Every counter, for messages.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        self.kernel.counters().expect("counters")
    }

    /// Every DNS packet in the DNS ring.
    pub fn dns(&mut self) -> Vec<events::DnsPacket> {
        let mut out = Vec::new();
        while let Some(item) = self.dns_ring.next() {
            match events::decode(&item).expect("decodable DNS event") {
                events::Event::Dns(p) => out.push(p),
                other => panic!("non-DNS event on the DNS ring: {other:?}"),
            }
        }
        out
    }

    pub fn events(&mut self) -> Vec<events::Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(events::decode(&item).expect("decodable event"));
        }
        out
    }
}

/// The cgroup v2 id of this process (the test-run socket belongs to it).
pub fn own_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = podlens_agent::preflight::find_cgroup2(&mountinfo).expect("cgroup2 mounted");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup2 entry");
    std::fs::metadata(root.join(path.trim_start_matches('/'))).expect("own cgroup dir").ino()
}

/// Ids of the programs attached to a cgroup for inet egress (or ingress),
/// by BPF_PROG_QUERY.
pub fn attached_programs(cgroup: &std::path::Path, egress: bool) -> Vec<u32> {
    use std::os::fd::AsRawFd;

    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let dir = std::fs::File::open(cgroup).expect("open cgroup");
    let mut ids = [0u32; 256];
    let mut q = Query {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: if egress { 1 } else { 0 },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: q points at a buffer of `prog_cnt` ids that outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut Query, std::mem::size_of::<Query>() as u32)
    };
    assert_eq!(rc, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    ids[..q.prog_cnt as usize].to_vec()
}
