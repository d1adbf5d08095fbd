#!/usr/bin/env bash
# One-time, idempotent set-up for prismkit on Debian 12 (run as root).
# Every step checks first and does nothing when already done, so a second run
# takes seconds. Exits non-zero with one clear line when something is wrong.
set -euo pipefail
cd "$(dirname "$0")/.."

say()  { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
fail() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "prismkit set-up needs root (eBPF, apt, tracefs): run it as root or with sudo"
[ "$(uname -m)" = x86_64 ] || fail "unsupported architecture $(uname -m): the probe packs are x86-64 first"
kmaj=$(uname -r | cut -d. -f1); kmin=$(uname -r | cut -d. -f2)
if [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -lt 8 ]; }; then
  fail "unsupported kernel $(uname -r): prismkit needs Linux 5.8 or newer (BPF ring buffers)"
fi

# --- Debian packages -------------------------------------------------------
need=()
for p in bpfcc-tools python3-bpfcc libbpfcc cmake g++ make gdb; do  # gdb: prism python-monitor
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- kernel headers (only where the running kernel has none) ---------------
kdir=/lib/modules/$(uname -r)
if [ -z "${BCC_KERNEL_SOURCE:-}" ] && [ ! -e "$kdir/build/include" ]; then
  if ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
    say "no kernel headers for $(uname -r): installing Debian's linux-headers-amd64 (safe for tracepoints and uprobes)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-amd64 >/dev/null \
      || fail "no kernel headers for $(uname -r) and linux-headers-amd64 did not install"
  fi
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
  common=${hdr%-amd64}-common
  [ -d "$common" ] || fail "kernel headers incomplete: $common is missing"
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  say "linked $kdir/build -> $hdr and source -> $common"
fi

# --- tracefs ----------------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || fail "cannot mount tracefs on /sys/kernel/tracing (is this a container without CAP_SYS_ADMIN?)"
fi

# --- Python virtual environment ---------------------------------------------
py=${PRISM_PYTHON:-}
if [ -z "$py" ]; then
  for c in "$HOME/.pyenv/versions/3.11"*/bin/python3.11 /usr/bin/python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then py=$c; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $py"
  "$py" -m venv .venv
fi
stamp=.venv/.prism-installed
# Reinstall when the dependencies or the native parts (reader, event encoder, forest, gdb shim) change.
want=$(cat pyproject.toml setup.py prismkit/trace/_wire.c recorders/_encode.c prismkit/detect/_forest.c recorders/packs/pymonitor/gdb_xstate.c 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies into .venv (first run takes a few minutes)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e . ; } \
       >.venv/pip.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip.log | tail -15 >&2
    fail "pip install failed (full log: .venv/pip.log)"
  fi
  echo "$want" > "$stamp"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

# --- final check: can we load a BPF program? --------------------------------
.venv/bin/python -m prismkit.preflight || exit 1
