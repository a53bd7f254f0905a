# syntax=docker/dockerfile:1
#
# podlens-collector (the central service) and podlens (the CLI) in one image.
# Build from the repository root:
#
#   docker build -f deploy/docker/collector.Dockerfile -t podlens-collector .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
# See deploy/docker/README.md.

# The toolchain the project is developed and tested with (`rustc --version`).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS builder

# The collector does not depend on agent-ebpf, so no clang or libbpf is
# needed; the protobuf code is committed (proto/src/gen), so no protoc either.
# ring (rustls' crypto) builds a little C and assembly with the image's gcc.
# Line tables (profile.release debug = 1) would make the binaries several
# times larger: strip them; symbols stay, so backtraces still name functions.
ENV CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

WORKDIR /build

# Cargo loads every workspace member's manifest (and needs each to have a
# target) before it builds one package, so all members are copied; only
# sources, never target/ or agent/fuzz. agent-ebpf's build.rs is not run: the
# collector does not depend on it.
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

# The registry, git checkouts and target/ live in cache mounts; the binaries
# are copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,id=podlens-collector-target,sharing=locked \
    cargo build --release --locked -p podlens-collector --bin podlens-collector --bin podlens \
 && install -D -m 0755 target/release/podlens-collector /out/podlens-collector \
 && install -D -m 0755 target/release/podlens /out/podlens

# glibc, libgcc_s and CA certificates; no shell, no package manager; runs as
# the image's unprivileged user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

LABEL org.opencontainers.image.title="podlens-collector" \
      org.opencontainers.image.description="podlens collector: ingests every node's stream over mTLS, serves the Observe and Query APIs, finds noisy neighbours and NetworkPolicy gaps; with the podlens CLI" \
      org.opencontainers.image.source="https://github.com/podlens/podlens" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/podlens-collector /usr/local/bin/podlens-collector
COPY --from=builder /out/podlens /usr/local/bin/podlens

# Consumers (Observe, Query), agents (Ingest), /metrics /healthz /readyz:
# the defaults of --listen, --ingest-listen and --metrics-listen.
EXPOSE 7700 7701 9090

# --state-dir (admitted sequences, egress baseline) must be a volume writable
# by this user (Kubernetes: securityContext.fsGroup: 65532).
USER 65532:65532

# `kubectl exec ... -- podlens status --server ...` runs the CLI in the same image.
ENTRYPOINT ["/usr/local/bin/podlens-collector"]
