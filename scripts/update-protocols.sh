#!/usr/bin/env bash
# Vendors Wayland protocol XML into protocols/ from Debian trixie .debs and rewrites
# protocols/SOURCES.md. Fetches with a private apt configuration under the user's cache
# dir, so it never touches the system's apt sources or state and needs no root.
# It does not edit the XML: every file is copied byte for byte.
set -euo pipefail

SUITE="trixie"
MIRROR="http://deb.debian.org/debian"
KEYRING="/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES=(wayland-protocols libwayland-dev)
CORE_XML="usr/share/wayland/wayland.xml"
WP_ROOT="usr/share/wayland-protocols"

# Unstable protocols that real clients still bind. Files not listed here are left out.
UNSTABLE=(
  xdg-decoration/xdg-decoration-unstable-v1.xml
  primary-selection/primary-selection-unstable-v1.xml
  text-input/text-input-unstable-v1.xml
  text-input/text-input-unstable-v3.xml
  relative-pointer/relative-pointer-unstable-v1.xml
  pointer-constraints/pointer-constraints-unstable-v1.xml
  idle-inhibit/idle-inhibit-unstable-v1.xml
  xdg-output/xdg-output-unstable-v1.xml
  xdg-foreign/xdg-foreign-unstable-v1.xml
  xdg-foreign/xdg-foreign-unstable-v2.xml
  linux-explicit-synchronization/linux-explicit-synchronization-unstable-v1.xml
  keyboard-shortcuts-inhibit/keyboard-shortcuts-inhibit-unstable-v1.xml
  pointer-gestures/pointer-gestures-unstable-v1.xml
  tablet/tablet-unstable-v2.xml
  input-timestamps/input-timestamps-unstable-v1.xml
  fullscreen-shell/fullscreen-shell-unstable-v1.xml
  linux-dmabuf/linux-dmabuf-unstable-v1.xml
  xdg-shell/xdg-shell-unstable-v6.xml
)
# unstable file -> stable dir that supersedes it. tablet-unstable-v2 and
# linux-dmabuf-unstable-v1 declare the same interface names as their stable
# successors (which are supersets), so keeping both would clash.
declare -A SUPERSEDED_BY=(
  [tablet/tablet-unstable-v2.xml]=tablet
  [linux-dmabuf/linux-dmabuf-unstable-v1.xml]=linux-dmabuf
  [xdg-shell/xdg-shell-unstable-v6.xml]=xdg-shell
)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/protocols"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sommelier/apt-$SUITE"

start=$(date +%s)
mkdir -p "$CACHE/etc" "$CACHE/state/lists/partial" "$CACHE/cache/archives/partial" "$CACHE/debs"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$CACHE/etc/sources.list"
: >"$CACHE/state/status" # empty dpkg status: resolve as if nothing were installed

APT_OPTS=(
  -o "Dir::Etc::SourceList=$CACHE/etc/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State=$CACHE/state"
  -o "Dir::State::status=$CACHE/state/status"
  -o "Dir::Cache=$CACHE/cache"
)
# As root apt drops to _apt for downloads, which cannot enter a private dir under /root.
if [[ $EUID -eq 0 ]]; then APT_OPTS+=(-o "APT::Sandbox::User=root"); fi

apt-get "${APT_OPTS[@]}" -q update >&2
rm -f "$CACHE/debs"/*.deb
(cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -q download "${PACKAGES[@]}" >&2)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
declare -A VERSION=() DEBFILE=()
for pkg in "${PACKAGES[@]}"; do
  debs=("$CACHE/debs/${pkg}_"*.deb)
  [[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || { echo "expected one .deb for $pkg" >&2; exit 1; }
  VERSION[$pkg]="$(dpkg-deb -f "${debs[0]}" Version)"
  DEBFILE[$pkg]="$(basename "${debs[0]}")"
  mkdir -p "$WORK/$pkg"
  dpkg-deb -x "${debs[0]}" "$WORK/$pkg"
done

# Which package ships wayland.xml (libwayland-dev in trixie); fail loudly if it moved.
CORE_PKG=""
for pkg in "${PACKAGES[@]}"; do
  if [[ -f "$WORK/$pkg/$CORE_XML" ]]; then CORE_PKG="$pkg"; fi
done
[[ -n $CORE_PKG ]] || { echo "no package ships /$CORE_XML" >&2; exit 1; }
WP="$WORK/wayland-protocols/$WP_ROOT"

# Stage the new tree first, then swap, so a failure leaves protocols/ untouched.
STAGE="$WORK/out"
ROWS=() SKIPPED=()
add() { # add <dest rel to protocols/> <package> <path inside package>
  mkdir -p "$STAGE/$(dirname "$1")"
  cp -p "$WORK/$2/$3" "$STAGE/$1"
  ROWS+=("$1|$2|/$3")
}

add "wayland/wayland.xml" "$CORE_PKG" "$CORE_XML"
for kind in stable staging; do
  while IFS= read -r f; do
    add "$kind/$f" wayland-protocols "$WP_ROOT/$kind/$f"
  done < <(cd "$WP/$kind" && find . -name '*.xml' -printf '%P\n' | LC_ALL=C sort)
done
for f in "${UNSTABLE[@]}"; do
  if [[ ! -f "$WP/unstable/$f" ]]; then
    SKIPPED+=("unstable/$f|not in wayland-protocols ${VERSION[wayland-protocols]}"); continue
  fi
  succ="${SUPERSEDED_BY[$f]:-}"
  if [[ -n $succ && -d "$WP/stable/$succ" ]]; then
    SKIPPED+=("unstable/$f|superseded by stable/$succ"); continue
  fi
  add "unstable/$f" wayland-protocols "$WP_ROOT/unstable/$f"
done

# Every file must parse, and no interface name may be declared twice.
python3 - "$STAGE" <<'PY'
import os, sys, xml.dom.minidom
root = sys.argv[1]
seen, bad = {}, []
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        doc = xml.dom.minidom.parse(p)
        for i in doc.getElementsByTagName("interface"):
            seen.setdefault(i.getAttribute("name"), []).append(os.path.relpath(p, root))
dups = {k: v for k, v in seen.items() if len(v) > 1}
for k, v in sorted(dups.items()):
    print(f"duplicate interface {k}: {', '.join(v)}", file=sys.stderr)
sys.exit(1 if dups else 0)
PY

{
  echo "# Protocol sources"
  echo
  echo "Generated by \`scripts/update-protocols.sh\`; do not edit by hand."
  echo
  echo "Every XML file here is a byte-identical copy (licence header intact) from a Debian"
  echo "\`$SUITE\` package, fetched from $MIRROR with a private apt configuration."
  echo
  echo "| Package | Version | .deb |"
  echo "|---|---|---|"
  for pkg in "${PACKAGES[@]}"; do
    echo "| $pkg | ${VERSION[$pkg]} | ${DEBFILE[$pkg]} |"
  done
  echo
  echo "## Files (${#ROWS[@]})"
  echo
  echo "| File | Package | Version | Path in package | sha256 (first 16 hex) |"
  echo "|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r dest pkg path <<<"$row"
    sum="$(sha256sum "$STAGE/$dest" | cut -d' ' -f1)"
    echo "| \`$dest\` | $pkg | ${VERSION[$pkg]} | \`$path\` | \`${sum:0:16}\` |"
  done
  echo
  echo "## Left out on purpose"
  echo
  echo "Unstable protocols not named in the script's \`UNSTABLE\` list are not vendored."
  if [[ ${#SKIPPED[@]} -gt 0 ]]; then
    echo "Named but skipped:"
    echo
    for row in "${SKIPPED[@]}"; do
      IFS='|' read -r f why <<<"$row"
      echo "- \`$f\`: $why"
    done
  fi
  echo
  echo "## Refresh"
  echo
  echo '```sh'
  echo "scripts/update-protocols.sh"
  echo '```'
  echo
  echo "Needs apt-get, dpkg-deb, python3 and debian-archive-keyring; no root. Apt state lives in"
  echo "\`\${XDG_CACHE_HOME:-\$HOME/.cache}/sommelier/apt-$SUITE\`; the system's apt sources are not"
  echo "touched. The script rewrites \`protocols/\` wholly, checks every file parses as XML and"
  echo "fails if two files declare the same interface name."
} >"$STAGE/SOURCES.md"

rm -rf "$OUT/wayland" "$OUT/stable" "$OUT/staging" "$OUT/unstable" "$OUT/SOURCES.md"
mkdir -p "$OUT"
cp -rp "$STAGE"/. "$OUT"/
echo "vendored ${#ROWS[@]} files into $OUT in $(( $(date +%s) - start ))s" >&2
