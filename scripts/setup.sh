#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: the Debian packages sommelier needs to
# build, run and test, then `npm ci` and the build. Safe to run again: every step is skipped
# when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages:
#   weston, wayland-utils (wayland-info), wl-clipboard, foot: the host compositor and real clients
#   libwayland-dev, libwayland-bin, wayland-protocols, pkg-config, gcc: the native bench/test clients
#   libdrm-dev, libgbm-dev: the cross-domain (virtio-gpu) backend's headers and libraries
#   xvfb, xdotool: weston's x11 backend gives tests a real wl_seat (headless weston has none)
#   waypipe: the peer proxy measured beside us by `npm run bench`
#   strace, util-linux (prlimit, taskset): golden capture tool and fault tests
#   qemu-system-x86, qemu-system-gui, busybox-static, xz-utils, binutils: the VM test (npm run test:vm) boots
#     Debian's kernel under QEMU with virtio-gpu (the gl devices draw through SDL+GL into Xvfb);
#     the kernel and trixie's QEMU are fetched into a cache by scripts/vm/fetch.sh, not installed
PACKAGES=(
  weston wayland-utils wl-clipboard foot
  libwayland-dev libwayland-bin wayland-protocols pkg-config gcc libc6-dev
  libdrm-dev libgbm-dev
  xvfb xdotool x11-utils
  waypipe strace util-linux
  qemu-system-x86 qemu-system-gui busybox-static xz-utils binutils
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node.js >= 20.19 is required (found $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.sommelier-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi

npm run --silent build
