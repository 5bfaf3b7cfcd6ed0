# Shared helpers of scripts/test.sh and scripts/bench.sh (sourced, not run).

CLEANUPS=()
# add_cleanup registers a shell command to run on exit (last added, first run).
add_cleanup() { CLEANUPS+=("$1"); }
run_cleanups() {
  local i
  for ((i=${#CLEANUPS[@]}-1; i>=0; i--)); do eval "${CLEANUPS[i]}" || true; done
}

# need_pkg installs Debian packages that are missing (as root, as on CI).
need_pkg() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "need root to install ${missing[*]}" >&2; return 1; fi
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_for_file waits up to 60 s for a server to write its address file.
wait_for_file() {
  local f=$1 i
  for i in $(seq 1 600); do [ -s "$f" ] && return 0; sleep 0.1; done
  echo "timed out waiting for $f" >&2; return 1
}

# wait_for_http waits up to 30 s for URL to answer 200.
wait_for_http() {
  local url=$1 i
  for i in $(seq 1 300); do curl -fsk -o /dev/null "$url" && return 0; sleep 0.1; done
  echo "timed out waiting for $url" >&2; return 1
}

# free_port prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
