//! `cargo xtask <task>`: developer tasks that need more than cargo.

mod protogen;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "podlens developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate agent-ebpf/include/vmlinux.h from the running kernel's BTF (needs bpftool).
    Vmlinux {
        /// BTF source.
        #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
        btf: PathBuf,
    },
    /// Regenerate proto/src/gen from proto/podlens/v1/*.proto.
    Proto,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Vmlinux { btf } => vmlinux(&btf),
        Task::Proto => proto(),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn vmlinux(btf: &Path) -> Result<()> {
    let out = root().join("agent-ebpf/include/vmlinux.h");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output()
        .context("running bpftool (Debian: apt-get install bpftool)")?;
    if !output.status.success() {
        bail!("bpftool failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(&out, &output.stdout).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} bytes)", out.display(), output.stdout.len());
    Ok(())
}

fn proto() -> Result<()> {
    let proto = root().join("proto");
    protogen::generate(&proto, &proto.join("src/gen")).map_err(anyhow::Error::msg)?;
    println!("regenerated {}", proto.join("src/gen").display());
    Ok(())
}
