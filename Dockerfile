# The gantry binary in a small image: `gantry up` (control plane) and `gantry node` (worker)
# both run from it; see docker-compose.yml. Plain `docker build .` works (no BuildKit needed).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# .dockerignore leaves out rust-toolchain.toml, so this image's own 1.95 toolchain builds gantry
# instead of rustup installing the exact release and extra components that file names.
COPY . .
RUN cargo build --release --locked --bin gantry \
 && install -m 0755 target/release/gantry /usr/local/bin/gantry

FROM debian:bookworm-slim
# ca-certificates: for TLS to NATS (--nats-ca adds a private CA). tini: PID 1 that forwards
# signals to gantry (it stops cleanly on SIGTERM) and reaps orphaned processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gantry \
 && useradd --uid 10001 --gid gantry --home-dir /var/lib/gantry --no-create-home \
      --shell /usr/sbin/nologin gantry \
 && install -d -o gantry -g gantry -m 0750 /var/lib/gantry \
 && install -d -o gantry -g gantry -m 0700 /etc/gantry
COPY --from=builder /usr/local/bin/gantry /usr/local/bin/gantry
# A named volume mounted here starts with this directory's owner, so gantry can write it.
ENV GANTRY_DATA=/var/lib/gantry
# The server's secret key (API key hashes) and the Auditor's signing key (checkpoints) live
# outside the data dir; created on first start.
ENV GANTRY_SECRET_KEY_FILE=/etc/gantry/secret.key
ENV GANTRY_AUDIT_KEY_FILE=/etc/gantry/audit.key
WORKDIR /var/lib/gantry
USER gantry
EXPOSE 7700
ENTRYPOINT ["/usr/bin/tini", "--", "gantry"]
