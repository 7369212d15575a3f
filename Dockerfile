# syntax=docker/dockerfile:1
# credvend container image (docs/design.md, Operations): build in a full Rust image, run
# the static-ish binary in distroless (glibc, libgcc, CA certificates, no shell, uid 65532
# "nonroot").
#
#   docker build -t credvend .
#   docker run --rm -v /etc/credvend:/etc/credvend:ro -p 127.0.0.1:8901:8901 credvend
#
# Usage as a sidecar and the environment it reads: docs/deployment.md, "Container".

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
# aws-lc-sys (TLS for the AWS SDK) builds its C sources with cmake, and
# tikv-jemalloc-sys (the allocator) with the image's cc and make. Builder stage only,
# never shipped, so the distribution's current cmake is fine.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so that a change to
# src/ reuses this layer instead of recompiling the AWS SDK.
# Cargo.toml declares the criterion bench (`[[bench]] hot_path`, harness = false), so a
# stub of it must exist for the manifest to load; release builds never compile it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# COPY keeps the files' old mtimes; touch them so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/credvend /out/usr/local/bin/credvend \
 && install -d -m 0755 /out/run/credvend

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="credvend" \
      org.opencontainers.image.description="Credential-vending sidecar: AWS container credentials for customer roles assumed with External IDs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="UNLICENSED" \
      org.opencontainers.image.documentation="docs/deployment.md, "Container""

COPY --from=builder /out/usr/local/bin/credvend /usr/local/bin/credvend
# The control socket's directory (distroless has no shell to mkdir): owned by the
# runtime user, mode 0755, which credvend requires (a directory others could write is a
# configuration error). Mount a volume here to reach the socket from another container
# of the pod; it must not be writable by others (docs/deployment.md, "Container").
COPY --from=builder --chown=65532:65532 /out/run/ /run/
# The example configuration, for reference only: mount the real one read-only at
# /etc/credvend/credvend.toml (it holds External IDs and token hashes).
COPY config/credvend.toml /usr/share/doc/credvend/credvend.toml.example

# Smoke test: the binary runs on this base image (exec form: distroless has no shell).
RUN ["/usr/local/bin/credvend", "--version"]

# 8901: credential endpoint; 8902: admin (/metrics, /healthz, /readyz, /status). Both
# bind loopback by default: inside a pod the workers share the network namespace. For
# kubelet probes and Prometheus at the pod IP, open the admin listener only:
# CREDVEND_SERVER__ADMIN_LISTEN=0.0.0.0:8902 and
# CREDVEND_SERVER__ADMIN_ALLOW_NON_LOOPBACK=true (allow_non_loopback is the credential
# listener's switch; leave it off). The admin listener accepts a Host of the pod IP,
# loopback names and CREDVEND_SERVER__ADMIN_ALLOWED_HOSTS; anything else is refused.
EXPOSE 8901 8902
# The control socket on, as in systemd/credvend.service: job tokens are minted on it
# (`credvend exec`, `credvend token`; docs/design.md, Job tokens). Access to it is the
# authority to mint; it is created mode 0660 for uid and gid 65532. Another absolute
# path moves it; an empty value (--env CREDVEND_CONTROL__SOCKET=) turns it off.
ENV CREDVEND_CONTROL__SOCKET=/run/credvend/control.sock
# Numeric (distroless "nonroot"), so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/credvend"]
CMD ["serve", "--config", "/etc/credvend/credvend.toml"]
