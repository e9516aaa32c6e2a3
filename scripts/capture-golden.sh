#!/usr/bin/env bash
# Maintenance tool, not a test: captures real Wayland traffic as golden vectors for the wire codec.
#
# Starts a private headless weston, runs wayland-info and weston-simple-shm (about 1 s) against it
# under strace, and writes test/golden/wire/<client>.json: a list of
#   { "direction": "request" | "event", "hex": "<whole frame>", "fds": <fds the frame carries> }
# in the order the frames completed on the client's socket.
#
# Bytes come from strace's sendmsg/recvmsg on the client's Wayland socket (the fd it connect()ed).
# Per-frame fd counts come from WAYLAND_DEBUG=client lines (matched per object id, in order);
# the script fails if their sum differs from the SCM_RIGHTS fds strace saw in each direction.
#
# Usage: scripts/capture-golden.sh [max-frames-per-client]   (default 300; simple-shm capped at 200)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT_DIR=test/golden/wire
MAX_FRAMES=${1:-300}

if ! command -v strace >/dev/null; then
  apt-get install -y strace
fi
for tool in weston wayland-info weston-simple-shm node; do
  command -v "$tool" >/dev/null || { echo "capture-golden: $tool not found" >&2; exit 1; }
done

RUNTIME=$(mktemp -d /tmp/sommelier-golden.XXXXXX)
chmod 0700 "$RUNTIME"
export XDG_RUNTIME_DIR=$RUNTIME
SOCKET=golden-$$
WESTON_PID=

cleanup() {
  if [[ -n "$WESTON_PID" ]]; then kill "$WESTON_PID" 2>/dev/null || true; wait "$WESTON_PID" 2>/dev/null || true; fi
  rm -rf "$RUNTIME"
}
trap cleanup EXIT

start_weston() {
  # Newer weston takes the short backend name; weston 10 wants the module file name.
  for backend in headless headless-backend.so; do
    weston --backend="$backend" --use-pixman --socket="$SOCKET" --no-config >"$RUNTIME/weston-$backend.log" 2>&1 &
    WESTON_PID=$!
    for _ in $(seq 50); do
      [[ -S "$RUNTIME/$SOCKET" ]] && return 0
      kill -0 "$WESTON_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$WESTON_PID" 2>/dev/null || true
    wait "$WESTON_PID" 2>/dev/null || true
    WESTON_PID=
  done
  echo "capture-golden: weston did not start; logs in $RUNTIME" >&2
  cat "$RUNTIME"/weston-*.log >&2
  exit 1
}

# trace <name> <seconds or 0> <command...>: runs the client under strace with WAYLAND_DEBUG.
trace() {
  local name=$1 seconds=$2
  shift 2
  local pidfile="$RUNTIME/$name.pid"
  # The sh wrapper records the client's pid so only that process is signalled.
  WAYLAND_DISPLAY=$SOCKET WAYLAND_DEBUG=client \
    strace -f -xx -s 65536 -e trace=connect,sendmsg,recvmsg,write,read -o "$RUNTIME/$name.strace" \
    sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >"$RUNTIME/$name.stdout" 2>"$RUNTIME/$name.debug" &
  local strace_pid=$!
  if [[ "$seconds" != 0 ]]; then
    sleep "$seconds"
    # SIGINT lets weston-simple-shm leave its loop and disconnect cleanly.
    [[ -s "$pidfile" ]] && kill -INT "$(cat "$pidfile")" 2>/dev/null || true
  fi
  wait "$strace_pid" || true
}

start_weston
trace wayland-info 0 wayland-info
trace weston-simple-shm 1 weston-simple-shm

mkdir -p "$OUT_DIR"
for name in wayland-info weston-simple-shm; do
  cap=$MAX_FRAMES
  [[ "$name" == weston-simple-shm && "$cap" -gt 200 ]] && cap=200
  node - "$RUNTIME/$name.strace" "$RUNTIME/$name.debug" "$OUT_DIR/$name.json" "$cap" "$SOCKET" <<'EOF'
const fs = require("node:fs")
const [stracePath, debugPath, outPath, capArg, socketName] = process.argv.slice(2)
const cap = Number(capArg)
const fail = (m) => { console.error(`capture-golden: ${outPath}: ${m}`); process.exit(1) }
const unhex = (s) => Buffer.from(s.replace(/\\x/g, ""), "hex")

// 1. Bytes and SCM_RIGHTS fds per direction, from sendmsg/recvmsg on the Wayland socket.
let sock = -1
const chunks = [] // { dir, bytes, fds } in syscall order
for (const line of fs.readFileSync(stracePath, "latin1").split("\n")) {
  if (/<unfinished \.\.\.>|resumed>/.test(line)) fail("strace split a call across threads; rerun")
  const c = /^\d+\s+connect\((\d+), \{sa_family=AF_UNIX, sun_path="([^"]*)"/.exec(line)
  if (c && / = 0$/.test(line) && unhex(c[2]).toString().endsWith(`/${socketName}`)) sock = Number(c[1])
  const m = /^\d+\s+(sendmsg|recvmsg)\((\d+), (.*) = (-?\d+)/.exec(line)
  if (!m || Number(m[2]) !== sock || Number(m[4]) <= 0) continue
  const bytes = Buffer.concat([...m[3].matchAll(/iov_base="((?:\\x[0-9a-f]{2})*)"/g)].map((x) => unhex(x[1])))
  if (bytes.length !== Number(m[4])) fail(`${m[1]} returned ${m[4]} bytes but strace showed ${bytes.length}`)
  let fds = 0
  for (const d of m[3].matchAll(/cmsg_type=SCM_RIGHTS, cmsg_data=\[([^\]]*)\]/g)) fds += d[1].split(",").filter((s) => s.trim()).length
  chunks.push({ dir: m[1] === "sendmsg" ? "request" : "event", bytes, fds })
}
if (sock < 0) fail("no connect() to the Wayland socket in the strace log")

// 2. Per-object fd counts, in order, from WAYLAND_DEBUG=client.
const debug = { request: new Map(), event: new Map() }
for (const line of fs.readFileSync(debugPath, "utf8").split("\n")) {
  const d = /^\[\s*[\d.]+\]\s+(-> )?\s*(?:discarded )?[\w\[\]]+@(\d+)\.\w+\((.*)\)\s*$/.exec(line)
  if (!d) continue
  const dir = d[1] ? "request" : "event"
  const fds = (d[3].replace(/"(?:[^"\\]|\\.)*"/g, "").match(/\bfd -?\d+/g) ?? []).length
  const q = debug[dir].get(d[2]) ?? []
  q.push(fds)
  debug[dir].set(d[2], q)
}

// 3. Split each direction's byte stream into frames, in the order they complete.
const pending = { request: Buffer.alloc(0), event: Buffer.alloc(0) }
const seen = { request: 0, event: 0 }
const counted = { request: 0, event: 0 }
const frames = []
for (const { dir, bytes, fds } of chunks) {
  seen[dir] += fds
  let buf = Buffer.concat([pending[dir], bytes])
  while (buf.length >= 8) {
    const size = buf.readUInt32LE(4) >>> 16
    if (size < 8 || size % 4 !== 0) fail(`bad frame size ${size} in the ${dir} stream`)
    if (buf.length < size) break
    const id = String(buf.readUInt32LE(0))
    const n = debug[dir].get(id)?.shift() ?? 0
    counted[dir] += n
    frames.push({ direction: dir, hex: buf.subarray(0, size).toString("hex"), fds: n })
    buf = buf.subarray(size)
  }
  pending[dir] = buf
}
for (const dir of ["request", "event"]) {
  if (seen[dir] !== counted[dir]) fail(`${dir}s: strace saw ${seen[dir]} fds, WAYLAND_DEBUG attributes ${counted[dir]}`)
}
const kept = frames.slice(0, cap)
fs.writeFileSync(outPath, "[\n" + kept.map((f) => "  " + JSON.stringify(f)).join(",\n") + "\n]\n")
console.log(`${outPath}: ${kept.length} of ${frames.length} frames (${kept.filter((f) => f.direction === "request").length} requests), fds: ${seen.request} sent, ${seen.event} received`)
EOF
done
