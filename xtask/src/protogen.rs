//! Generates the podlens.v1 Rust code from proto/podlens/v1/*.proto with protox
//! (pure Rust, no protoc) and tonic-prost-build.
//!
//! Shared by `cargo xtask proto` (writes proto/src/gen) and by the proto crate's
//! test that regenerates into a temporary directory and diffs.

use std::path::{Path, PathBuf};

/// The schema files, in dependency order.
pub const FILES: &[&str] = &[
    "podlens/v1/common.proto",
    "podlens/v1/dns.proto",
    "podlens/v1/flow.proto",
    "podlens/v1/pressure.proto",
    "podlens/v1/finding.proto",
    "podlens/v1/record.proto",
    "podlens/v1/ingest.proto",
    "podlens/v1/observe.proto",
    "podlens/v1/query.proto",
];

/// Name of the encoded FileDescriptorSet written next to the code (for gRPC reflection).
pub const DESCRIPTOR_FILE: &str = "podlens_descriptor.bin";

/// Writes `podlens.v1.rs` and the descriptor set into `out_dir`.
pub fn generate(proto_root: &Path, out_dir: &Path) -> Result<(), String> {
    let files: Vec<PathBuf> = FILES.iter().map(|f| proto_root.join(f)).collect();
    let fds = protox::compile(&files, [proto_root]).map_err(|e| format!("{e:?}"))?;
    let descriptor = prost::Message::encode_to_vec(&fds);
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    std::fs::write(out_dir.join(DESCRIPTOR_FILE), descriptor).map_err(|e| format!("writing descriptor: {e}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out_dir)
        .compile_fds(fds)
        .map_err(|e| format!("generating code: {e}"))
}
