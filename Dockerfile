# syntax=docker/dockerfile:1
#
# One image holding every Roombook binary; each Deployment picks its program with `command`
# (k8s/*.yaml). One image means one build, one scan and one tag per release, and the services
# share almost all of their dependencies, so separate images would mostly repeat the same bytes.
#
#   docker build -t roombook:0.1.0 .
#   docker run --rm -e JWT_SECRET=dev -p 8088:8088 roombook:0.1.0 roombook-gateway
#
# The binary list below is checked against the crates' [[bin]] targets and the Deployments'
# commands by deploy-tests (test_dockerfile.py): add a service in all three places.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ---------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and compiled dependencies between builds (BuildKit);
# the binaries are copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin roombook-booking \
        --bin roombook-confirm \
        --bin roombook-orchestrator \
        --bin roombook-notification \
        --bin roombook-bookinglist \
        --bin roombook-gateway \
    && install -D -m 0755 -t /out \
        target/release/roombook-booking \
        target/release/roombook-confirm \
        target/release/roombook-orchestrator \
        target/release/roombook-notification \
        target/release/roombook-bookinglist \
        target/release/roombook-gateway

# ---- run -----------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and a non-root user, nothing else (no shell, no
# package manager). It matches the builder's Debian release, so the binaries' glibc is there.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="roombook" \
      org.opencontainers.image.description="Roombook services: booking, confirm, orchestrator, notification, bookinglist, gateway" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /out/ /usr/local/bin/
# 65532 is distroless' "nonroot"; numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8081 8082 8083 8084 8085 8088
# No default program: choose one, e.g. `roombook-booking` (Kubernetes sets `command`).
CMD ["/usr/local/bin/roombook-gateway", "--help"]
