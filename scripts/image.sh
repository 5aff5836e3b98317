#!/usr/bin/env bash
# Builds container images without a daemon or a registry: buildah, with
# base images made on this machine (none can be pulled here), in a storage
# of its own under the cache. Each command prints the archive it wrote.
#
#   scripts/image.sh tether OUT.tar [--binary PATH]
#       the repository's Dockerfile, taking the binary at PATH (default:
#       target/debug/tether) on the runtime base; a docker-archive of
#       localhost/tether:test that `ctr images import` reads
#   scripts/image.sh tether OUT.tar --from-source
#       the same Dockerfile building the binary itself (release, in a build
#       container on the builder base: slow on two cores)
#   scripts/image.sh pause OUT.tar
#       the pod sandbox image, localhost/pause:tether (a static pause
#       binary compiled here)
#
# Base images, made once and kept in the storage:
#   localhost/tether-base/runtime:bookworm  distroless-like: glibc,
#       libgcc, CA certificates, a nonroot user (65532), from Debian's .debs
#   localhost/tether-base/builder:<rust>    Debian (debootstrap) with the
#       Rust toolchain installed on this machine (only for --from-source)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CACHE="${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}"
IMAGES="$CACHE/images"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
RUNTIME_BASE="localhost/tether-base/runtime:${DEBIAN_SUITE}"
PAUSE_IMAGE="localhost/pause:tether"
TETHER_IMAGE="${TETHER_IMAGE:-localhost/tether:test}"

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v buildah >/dev/null || die "buildah is required (apt-get install buildah runc)"
mkdir -p "$IMAGES"

# runc, not crun (crun cannot set up cgroups here); cgroupfs, no systemd;
# a build container's ulimits lowered below this machine's (runc cannot
# set buildah's defaults here: "error setting rlimit type 7" (nofile), and
# "type 6" (nproc) even at the current hard limit).
cat > "$IMAGES/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
runtime = "runc"
CONF
cat > "$IMAGES/registries.conf" <<'CONF'
unqualified-search-registries = []
short-name-mode = "disabled"
CONF
export CONTAINERS_CONF="$IMAGES/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$IMAGES/registries.conf"
export BUILDAH_ISOLATION=oci
bah() {
  buildah --root "$IMAGES/storage" --runroot "/run/tether-images" --storage-driver overlay "$@"
}
# Temporary directories, removed however the script ends.
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT
scratch_dir() { SCRATCH=$(mktemp -d "$IMAGES/tmp.XXXXXX"); scratch+=("$SCRATCH"); }
have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# Debian packages for a rootfs, fetched by apt (Debian's registry) into a
# cache and unpacked: no maintainer scripts run.
unpack_debs() {
  local root=$1; shift
  local debs="$IMAGES/debs"
  mkdir -p "$debs"
  (cd "$debs" && apt-get download "$@" >&2) || die "apt-get download $* failed (apt-get update first?)"
  for p in "$@"; do
    local deb
    deb=$(ls -t "$debs/${p}"_*.deb | head -n1)
    dpkg-deb -x "$deb" "$root"
  done
}

runtime_base() {
  have_image "$RUNTIME_BASE" && return 0
  log "making $RUNTIME_BASE from Debian's packages (first time only)"
  local root
  scratch_dir; root=$SCRATCH
  unpack_debs "$root" libc6 libgcc-s1 gcc-12-base tzdata netbase
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale"
  local c
  c=$(bah from scratch)
  bah copy "$c" "$root/" / >/dev/null
  bah config --user 65532:65532 --workingdir /home/nonroot --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$c"
  bah commit --rm "$c" "$RUNTIME_BASE" >/dev/null
}

builder_base() {
  local toolchain
  toolchain=$(rustc --version | awk '{print $2}')
  # "-make": jemalloc's build (tikv-jemalloc-sys) runs configure and make.
  local image="localhost/tether-base/builder:${toolchain}-make"
  have_image "$image" && { echo "$image"; return 0; }
  command -v debootstrap >/dev/null || die "debootstrap is required (apt-get install debootstrap)"
  log "making $image: debootstrap $DEBIAN_SUITE and the installed Rust $toolchain (first time only)"
  local root
  scratch_dir; root=$SCRATCH
  debootstrap --variant=minbase --include=gcc,libc6-dev,make,ca-certificates \
    "$DEBIAN_SUITE" "$root" http://deb.debian.org/debian >&2
  local sysroot
  sysroot=$(rustc --print sysroot)
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo/bin"
  cp -a "$sysroot/." "$root/usr/local/rust/"
  rm -rf "$root/usr/local/rust/share/doc"
  local c
  c=$(bah from scratch)
  bah copy "$c" "$root/" / >/dev/null
  bah config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo "$c"
  bah commit --rm "$c" "$image" >/dev/null
  echo "$image"
}

pause() {
  local out=$1
  if ! have_image "$PAUSE_IMAGE"; then
    log "making $PAUSE_IMAGE (first time only)"
    local dir
    scratch_dir; dir=$SCRATCH
    # What the upstream pause does: sleep until told to stop, reap
    # orphans when it is a pod's PID 1.
    cat > "$dir/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction s = {0};
  s.sa_handler = stop;
  sigaction(SIGINT, &s, NULL);
  sigaction(SIGTERM, &s, NULL);
  s.sa_handler = reap;
  s.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &s, NULL);
  for (;;) pause();
}
C
    gcc -static -O2 -o "$dir/pause" "$dir/pause.c"
    local c
    c=$(bah from scratch)
    bah copy "$c" "$dir/pause" /pause >/dev/null
    bah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    bah commit --rm "$c" "$PAUSE_IMAGE" >/dev/null
  fi
  export_archive "$PAUSE_IMAGE" "$out"
}

export_archive() {
  local image=$1 out=$2
  rm -f "$out"
  bah push "$image" "docker-archive:${out}:${image}" >&2
  echo "$out"
}

tether() {
  local out=$1; shift
  local binary="" from_source=false
  while [[ $# -gt 0 ]]; do
    case $1 in
      --binary) binary=$2; shift 2 ;;
      --from-source) from_source=true; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  runtime_base
  local args=(--pull=never --layers --force-rm --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE" -f "$repo/Dockerfile" -t "$TETHER_IMAGE")
  if $from_source; then
    local builder
    builder=$(builder_base)
    # The build container reaches crates.io with the host's CA certificates.
    args+=(--build-arg "BUILDER_IMAGE=$builder" --build-arg BINARY_FROM=build
      -v /etc/ssl/certs:/etc/ssl/certs:ro --network host)
  else
    binary="${binary:-target/debug/tether}"
    [[ -x "$binary" ]] || die "no binary at $binary (cargo build first, or --from-source)"
    mkdir -p "$repo/target/image"
    strip -o "$repo/target/image/tether" "$binary"
    args+=(--build-arg BINARY_FROM=prebuilt --build-arg BINARY=target/image/tether)
  fi
  # --force-rm: buildah 1.28 otherwise keeps a working container (and its
  # mounted layer) of the stage the binary comes from, at every build.
  log "building $TETHER_IMAGE from the Dockerfile"
  bah bud "${args[@]}" "$repo" >&2
  export_archive "$TETHER_IMAGE" "$out"
}

case "${1:-}" in
  tether) shift; [[ $# -ge 1 ]] || die "usage: $0 tether OUT.tar [--binary PATH | --from-source]"; tether "$@" ;;
  pause) shift; [[ $# -eq 1 ]] || die "usage: $0 pause OUT.tar"; pause "$1" ;;
  runtime-base) runtime_base ;;
  builder-base) builder_base ;;
  *) die "usage: $0 tether|pause|runtime-base|builder-base ..." ;;
esac
