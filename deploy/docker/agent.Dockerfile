# syntax=docker/dockerfile:1
#
# podlens-agent: the node daemon (DaemonSet). Build from the repository root:
#
#   docker build -f deploy/docker/agent.Dockerfile -t podlens-agent .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
# See deploy/docker/README.md.

# The toolchain the project is developed and tested with (`rustc --version`).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS builder

# agent-ebpf/build.rs compiles agent-ebpf/src/bpf/*.bpf.c with clang and embeds
# the objects in the binary: clang-16 (preferred over bookworm's default clang 14,
# which leaves builtins the loader cannot resolve), llvm-16 for llvm-strip-16
# (drops the objects' DWARF), libbpf-dev for the BPF-side headers
# (bpf_helpers.h, bpf_core_read.h, ...). vmlinux.h is committed, and the protobuf
# code is committed too (proto/src/gen), so neither bpftool nor protoc is needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-16 llvm-16 libbpf-dev \
 && rm -rf /var/lib/apt/lists/*

# Line tables (profile.release debug = 1) would make the binary several times
# larger: strip them; symbols stay, so backtraces still name functions.
ENV PODLENS_CLANG=clang-16 \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

WORKDIR /build

# Cargo loads every workspace member's manifest (and needs each to have a
# target) before it builds one package, so all members are copied; only
# sources, never target/ or agent/fuzz.
COPY Cargo.toml Cargo.lock ./
COPY agent/Cargo.toml agent/
COPY agent/src agent/src
COPY agent-ebpf/Cargo.toml agent-ebpf/build.rs agent-ebpf/
COPY agent-ebpf/include agent-ebpf/include
COPY agent-ebpf/src agent-ebpf/src
COPY collector/Cargo.toml collector/
COPY collector/src collector/src
COPY proto/Cargo.toml proto/
COPY proto/src proto/src
COPY xtask/Cargo.toml xtask/
COPY xtask/src xtask/src
COPY tests/Cargo.toml tests/
COPY tests/src tests/src

# The registry, git checkouts and target/ live in cache mounts, so a rebuild
# after a source change recompiles only what changed. The binary is copied out
# of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,id=podlens-agent-target,sharing=locked \
    cargo build --release --locked -p podlens-agent --bin podlens-agent \
 && install -D -m 0755 target/release/podlens-agent /out/podlens-agent

# glibc, libgcc_s and CA certificates; no shell, no package manager. The BPF
# programs are inside the binary: no compiler and no object files at run time.
FROM gcr.io/distroless/cc-debian12 AS runtime

LABEL org.opencontainers.image.title="podlens-agent" \
      org.opencontainers.image.description="podlens node agent: per-pod network flows, DNS and CPU pressure from eBPF, attributed to pods by cgroup, streamed to the podlens collector" \
      org.opencontainers.image.source="https://github.com/podlens/podlens" \
      org.opencontainers.image.licenses="Apache-2.0 AND (GPL-2.0-only OR MIT)"
# Apache-2.0: the Rust code (workspace license in Cargo.toml); GPL-2.0-only OR
# MIT: the embedded BPF programs (SPDX headers of agent-ebpf/src/bpf/*.bpf.c).

COPY --from=builder /out/podlens-agent /usr/local/bin/podlens-agent

# The agent runs as uid 0, but with only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
# (the pod spec drops ALL and adds those three; the agent checks its effective
# set at start and names what is missing). Not as a non-root uid: Kubernetes
# (through containerd or CRI-O) puts capabilities added in the securityContext
# into the effective set only for uid 0; a non-root process gets them in its
# bounding set, not in its effective set. File capabilities (setcap on the
# binary) would lift them at exec, but with allowPrivilegeEscalation: false
# (no_new_privs) the kernel ignores file capabilities, and the distroless image
# has no setcap anyway. uid 0 with three capabilities and no_new_privs is the
# least privilege that works; it is not `privileged: true`.
USER 0:0

# podlens-agent installs its own SIGTERM handler, so it shuts down cleanly as
# PID 1 (last window delivered, programs detached).
ENTRYPOINT ["/usr/local/bin/podlens-agent"]
