# Shared by scripts/demo and scripts/test: install what is missing, saying so.

# need COMMAND DEBIAN_PACKAGE WHY
need() {
  local cmd=$1 pkg=$2 why=$3
  if command -v "$cmd" >/dev/null 2>&1; then
    return 0
  fi
  echo "==> $cmd is not installed: installing the Debian package '$pkg' ($why)" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >&2
  command -v "$cmd" >/dev/null 2>&1 || { echo "==> installing $pkg did not provide $cmd" >&2; exit 1; }
}

step() {
  echo "==> $*" >&2
}
