#!/usr/bin/env bash
# Build pyconv for aarch64 and run its tests under qemu-user emulation, on an
# x86-64 Debian/Ubuntu host (root needed: binfmt, chroot, mounts).
#
#   tools/test-aarch64.sh                 # build + the aarch64 test subset
#   tools/test-aarch64.sh --full          # build + the whole test suite (slow)
#   tools/test-aarch64.sh --vec-report    # also list the loops GCC vectorized for NEON
#   tools/test-aarch64.sh -- -k winograd  # extra arguments go to pytest
#   tools/test-aarch64.sh --ci            # as .ci/run calls it: a host that cannot emulate
#                                         # aarch64 (no root, no binfmt_misc, no package
#                                         # registry) skips with the reason; test failures fail
#
# How it works: an arm64 Debian 12 root filesystem (Python, NumPy, SciPy,
# pytest, Cython 3 from PyPI) is built once with mmdebstrap and cached in
# $PYCONV_AARCH64_CACHE (default ~/.cache/pyconv-aarch64; ~1 GB, ~6 minutes
# cold).  The host's x86-64 cross compiler (gcc-aarch64-linux-gnu, with the
# x86-64 libraries it runs on) is copied in: inside the chroot Python runs
# emulated, but the compiler runs natively and emits aarch64 code, so the
# build takes seconds instead of many minutes.  Debian's Python already names
# its compiler aarch64-linux-gnu-gcc, so setup.py's normal path (OpenMP probe
# included) builds the extension.  (Installing the amd64 cross compiler with
# apt inside the arm64 root filesystem does not work: its arch-all
# dependencies are not Multi-Arch: foreign.)
# The checkout is copied into the root filesystem afresh on every run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${PYCONV_AARCH64_CACHE:-$HOME/.cache/pyconv-aarch64}
rootfs=$cache/rootfs
full=0
vec_report=0
ci=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full=1 ;;
    --vec-report) vec_report=1 ;;
    --ci) ci=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "usage: $0 [--full] [--vec-report] [--ci] [-- pytest args]" >&2; exit 2 ;;
  esac
  shift
done

# The subset: every kernel family and whole networks, in well under 15 minutes
# emulated.  The rest (CLI, ONNX import, the model zoo's counts) is
# architecture-independent Python over the same kernels.
subset=(tests/test_config.py tests/test_conv.py tests/test_winograd.py tests/test_pointwise_panels.py tests/test_pool.py
        tests/test_activation.py tests/test_norm.py tests/test_tensor.py
        tests/test_shift.py tests/test_adder.py tests/test_executor.py)

log() { printf '[aarch64] %s\n' "$*" >&2; }

# The host cannot run the job: a skip (exit 0) with --ci, an error otherwise.
cannot_run() {
  if [ $ci = 1 ]; then
    log "SKIPPED: $*"
    exit 0
  fi
  echo "$*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || cannot_run "needs root (binfmt_misc, chroot and mounts)"
[ "$(uname -m)" = x86_64 ] || cannot_run "written for an x86-64 host (found $(uname -m))"

ensure_host_tools() {
  local missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ -e /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v arch-test >/dev/null || missing+=(arch-test)
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
  command -v file >/dev/null || missing+=(file)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    command -v apt-get >/dev/null || cannot_run "missing ${missing[*]} and no apt-get to install them"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >/dev/null \
      || cannot_run "could not install ${missing[*]} from the package registry"
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || cannot_run "cannot mount binfmt_misc"
  fi
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  arch-test arm64 >/dev/null || cannot_run "arm64 binaries do not run here (binfmt/qemu)"
}

ensure_rootfs() {
  if [ -f "$rootfs/.pyconv-ready" ]; then
    return
  fi
  log "building the arm64 root filesystem in $rootfs (once; ~6 minutes)"
  mkdir -p "$cache"
  rm -rf "$rootfs.tmp"
  # No mirror argument: mmdebstrap uses the host's apt sources.
  mmdebstrap --architectures=arm64 --variant=minbase \
    --include=python3,python3-dev,python3-setuptools,python3-wheel,python3-pip,python3-numpy,python3-scipy,python3-pytest,python3-pil \
    bookworm "$rootfs.tmp" || cannot_run "mmdebstrap could not build the arm64 root filesystem (package registry?)"
  # Bookworm ships Cython 0.29; pyconv needs Cython >= 3: the host's pip
  # fetches the aarch64 wheel (the chroot has no network set-up of its own).
  rm -rf "$cache/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform manylinux2014_aarch64 -d "$cache/wheels" "Cython>=3" || cannot_run "could not download Cython for aarch64"
  mkdir -p "$rootfs.tmp/tmp/wheels"
  cp "$cache"/wheels/*.whl "$rootfs.tmp/tmp/wheels/"
  chroot "$rootfs.tmp" bash -c 'python3 -m pip install -q --break-system-packages --no-index /tmp/wheels/*.whl'
  install_cross_compiler "$rootfs.tmp"
  touch "$rootfs.tmp/.pyconv-ready"
  rm -rf "$rootfs"
  mv "$rootfs.tmp" "$rootfs"
}

install_cross_compiler() {
  # Copy the host's aarch64 cross toolchain (the files of its Debian packages)
  # and the x86-64 shared libraries its programs load into root filesystem $1.
  local dest=$1 pkgs files programs f lib
  pkgs=$(dpkg-query -W -f='${Package}\n' | grep -E '^(gcc|cpp|binutils)(-[0-9]+)?-aarch64-linux-gnu$|^(libc6|libc6-dev|linux-libc-dev|libgcc-[0-9]+-dev|libgcc-s1|libgomp1|libatomic1)-arm64-cross$')
  files=$(dpkg -L $pkgs)
  for f in $files; do
    if [ -f "$f" ] || [ -L "$f" ]; then cp -P --parents "$f" "$dest"; fi
  done
  programs=$(file -L $files 2>/dev/null | grep -F 'ELF 64-bit' | grep -F 'x86-64' | cut -d: -f1 || true)
  # ldd prints "program:" headers, then one indented line per library.
  for lib in $( { ldd $programs 2>/dev/null || true; } | grep -E '^[[:space:]]' | grep -oE '/[^ ]+[.]so[^ ]*' | sort -u); do
    cp -L --parents "$lib" "$dest"
  done
}

copy_checkout() {
  local dest=$rootfs/src/pyconv
  rm -rf "$dest"
  mkdir -p "$dest"
  # Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits has.
  # Timestamps are kept so that C files the host's Cython already generated
  # (same Cython major version; the C is portable) count as up to date and
  # the emulated build skips re-cythonizing them.
  (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$dest")
  (cd "$repo" && find pyconv/_core -name '*.c' -print0 | xargs -0 -r cp -p --parents -t "$dest")
  # The tests read ../shared (data files) when present.
  if [ -d "$repo/../shared" ]; then
    rm -rf "$rootfs/src/shared"
    cp -r "$repo/../shared" "$rootfs/src/shared"
  fi
}

run_in_chroot() {
  # A private mount namespace: the proc/sys/dev mounts vanish with the command.
  unshare --mount --propagation private bash -c '
    set -e
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
      PYCONV_NUM_THREADS="${PYCONV_NUM_THREADS:-2}" bash -c "$*"
  ' _ "$rootfs" "$@"
}

ensure_host_tools
ensure_rootfs
copy_checkout

log "building (cross compiler inside the chroot)"
start=$(date +%s)
cflags=""
if [ $vec_report = 1 ]; then
  cflags="-fopt-info-vec-optimized=/src/pyconv/build/vec-report.txt"
fi
run_in_chroot "cd /src/pyconv && mkdir -p build && CFLAGS='$cflags' python3 setup.py -q build_ext --inplace"
log "build took $(( $(date +%s) - start )) s"
run_in_chroot "cd /src/pyconv && python3 -c 'import pyconv, platform; print(platform.machine()); pyconv.show_config()'"

if [ $vec_report = 1 ]; then
  log "loops GCC vectorized for NEON, by kernel source line:"
  python3 "$repo/tools/vectorized_loops.py" "$rootfs/src/pyconv/build/vec-report.txt" "$rootfs/src/pyconv"
fi

if [ $full = 1 ]; then
  tests=(tests)
else
  tests=()
  for t in "${subset[@]}"; do
    [ -f "$repo/$t" ] && tests+=("$t")
  done
fi
log "running pytest on ${tests[*]} ${pytest_args[*]:-}"
start=$(date +%s)
run_in_chroot "cd /src/pyconv && python3 -m pytest -q -p no:cacheprovider ${tests[*]} ${pytest_args[*]:-}"
log "tests took $(( $(date +%s) - start )) s"
