#!/usr/bin/env bash
# Fetches and unpacks what the VM test boots, into a cache that later runs reuse:
#   kernel        bookworm's linux-image-6.1.*-amd64: the uncompressed vmlinux (PVH boot, no
#                 decompression under TCG) and the ten modules virtio-gpu needs
#   qemu-trixie   trixie's QEMU (10.x: virtio-gpu-gl with blob, hostmem and context-init) with
#                 every library it loads, unpacked with dpkg-deb -x and started through
#                 trixie's own ld.so, so it runs on bookworm without touching the system
# Uses private apt configurations (sources, lists, archives under the cache); never changes
# the system's apt state and needs no root (as root, apt's download sandbox is turned off).
# Does not install the host's QEMU, busybox-static or Xvfb: scripts/setup.sh does.
#
# Usage: scripts/vm/fetch.sh [kernel|qemu-trixie]...   (default: both)
# Prints one line per part: `<part> <directory>`; the directory holds a `version` file.
set -euo pipefail

CACHE="${SOMMELIER_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sommelier/vm}"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR="http://deb.debian.org/debian"
# The modules virtio-gpu needs on Debian's 6.1 kernel, in load order (from their .modinfo
# depends= lines; everything else it uses is built in).
MODULES=(
  drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/gpu/drm/drm
  drivers/gpu/drm/drm_kms_helper drivers/gpu/drm/drm_shmem_helper drivers/virtio/virtio_dma_buf
  drivers/gpu/drm/virtio/virtio-gpu
)
# QEMU with the gl device and SDL, plus Mesa's software GL (llvmpipe) for the SDL window.
QEMU_PACKAGES=(qemu-system-x86 qemu-system-gui qemu-system-modules-opengl libgl1-mesa-dri libegl-mesa0 libglx-mesa0 libsdl2-2.0-0)

log() { echo "fetch: $*" >&2; }

# apt_private NAME SOURCES-LINE...: sets APT_OPTS to a private apt configuration under
# $CACHE/apt-NAME with an empty dpkg status (resolve as if nothing were installed).
apt_private() {
  local dir="$CACHE/apt-$1"; shift
  mkdir -p "$dir/etc" "$dir/state/lists/partial" "$dir/cache/archives/partial"
  printf '%s\n' "$@" >"$dir/etc/sources.list"
  [[ -f "$dir/state/status" ]] || : >"$dir/state/status"
  APT_OPTS=(
    -o "Dir::Etc::SourceList=$dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State=$dir/state"
    -o "Dir::State::status=$dir/state/status"
    -o "Dir::Cache=$dir/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Get::Assume-Yes=true"
    -o "Acquire::Retries=3"
  )
  # As root apt drops to _apt for downloads, which cannot enter a private dir under /root.
  if [[ $EUID -eq 0 ]]; then APT_OPTS+=(-o "APT::Sandbox::User=root"); fi
  APT_DIR="$dir"
}

apt_update() { apt-get "${APT_OPTS[@]}" -q update >&2; }

fetch_kernel() {
  local done
  done=$(ls -d "$CACHE"/kernel/*/vmlinux 2>/dev/null | sort -V | tail -1 || true)
  if [[ -n $done && -f "$(dirname "$done")/version" ]]; then
    echo "kernel $(dirname "$done")"; return
  fi
  apt_private bookworm \
    "deb [signed-by=$KEYRING] $MIRROR bookworm main" \
    "deb [signed-by=$KEYRING] $MIRROR bookworm-updates main" \
    "deb [signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main"
  apt_update
  # The metapackage names the current ABI: linux-image-amd64 -> linux-image-6.1.0-N-amd64.
  local pkg
  pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-6\.1\./ {print $2; exit}')
  [[ -n $pkg ]] || { log "no linux-image-6.1.*-amd64 behind linux-image-amd64"; exit 1; }
  local work; work=$(mktemp -d)
  (cd "$work" && apt-get "${APT_OPTS[@]}" -q download "$pkg" >&2)
  local deb; deb=$(ls "$work"/*.deb)
  local ver; ver=$(dpkg-deb -f "$deb" Version)
  local kver=${pkg#linux-image-}
  local out="$CACHE/kernel/$kver"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp/modules"
  dpkg-deb -x "$deb" "$work/x"
  # vmlinuz is a bzImage with an xz payload (CONFIG_KERNEL_XZ): unpack the ELF inside it.
  local z="$work/x/boot/vmlinuz-$kver" off
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$z" | head -1 | cut -d: -f1)
  [[ -n $off ]] || { log "no xz payload in $z"; exit 1; }
  tail -c +$((off + 1)) "$z" >"$work/payload.xz" # a file, not a pipe: xz stops at the stream's end
  xz -dc --single-stream <"$work/payload.xz" >"$out.tmp/vmlinux"
  [[ $(head -c 4 "$out.tmp/vmlinux") == $'\x7fELF' ]] || { log "payload of $z is not an ELF"; exit 1; }
  local m
  for m in "${MODULES[@]}"; do
    cp "$work/x/lib/modules/$kver/kernel/$m.ko" "$out.tmp/modules/"
  done
  printf '%s\n' "${MODULES[@]##*/}" >"$out.tmp/modules/order"
  echo "$pkg $ver" >"$out.tmp/version"
  rm -rf "$work" "$out" && mv "$out.tmp" "$out"
  log "kernel $pkg $ver unpacked into $out"
  echo "kernel $out"
}

fetch_qemu_trixie() {
  local out="$CACHE/qemu-trixie"
  if [[ -x "$out/qemu" && -f "$out/version" ]]; then echo "qemu-trixie $out"; return; fi
  apt_private trixie "deb [signed-by=$KEYRING] $MIRROR trixie main"
  apt_update
  local archives="$APT_DIR/cache/archives"
  rm -f "$archives"/*.deb
  apt-get "${APT_OPTS[@]}" -q --download-only --no-install-recommends install "${QEMU_PACKAGES[@]}" >&2
  rm -rf "$out.tmp" && mkdir -p "$out.tmp/root"
  local deb n=0
  for deb in "$archives"/*.deb; do dpkg-deb -x "$deb" "$out.tmp/root"; n=$((n + 1)); done
  # Nothing here reads documentation, translations or icon themes (~90 MB).
  rm -rf "$out.tmp/root/usr/share/"{doc,locale,man,info,icons}
  local qver; qver=$(dpkg-deb -f "$archives"/qemu-system-x86_*.deb Version)
  local size; size=$(du -cb "$archives"/*.deb | tail -1 | cut -f1)
  rm -f "$archives"/*.deb
  local root='$(dirname "$(readlink -f "$0")")/root'
  # The wrapper: trixie's loader and libraries, QEMU's modules and firmware, Mesa's drivers
  # and glvnd's vendor files, all from the unpacked tree.
  cat >"$out.tmp/qemu" <<EOF
#!/bin/sh
# trixie's qemu-system-x86_64 from $out/root (generated by scripts/vm/fetch.sh)
R="$root"
L="\$R/usr/lib/x86_64-linux-gnu"
export QEMU_MODULE_DIR="\$L/qemu"
export LIBGL_DRIVERS_PATH="\$L/dri"
export __EGL_VENDOR_LIBRARY_DIRS="\$R/usr/share/glvnd/egl_vendor.d"
export __GLX_VENDOR_LIBRARY_NAME=mesa
exec "\$L/ld-linux-x86-64.so.2" --library-path "\$L:\$L/pulseaudio" \\
  "\$R/usr/bin/qemu-system-x86_64" -L "\$R/usr/share/qemu" -L "\$R/usr/share/seabios" "\$@"
EOF
  chmod +x "$out.tmp/qemu"
  echo "qemu-system-x86 $qver" >"$out.tmp/version"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "qemu-trixie $qver: $n packages, $((size / 1048576)) MiB downloaded, unpacked into $out"
  echo "qemu-trixie $out"
}

parts=("$@")
((${#parts[@]})) || parts=(kernel qemu-trixie)
for p in "${parts[@]}"; do
  case "$p" in
    kernel) fetch_kernel ;;
    qemu-trixie) fetch_qemu_trixie ;;
    *) log "unknown part '$p' (kernel, qemu-trixie)"; exit 2 ;;
  esac
done
