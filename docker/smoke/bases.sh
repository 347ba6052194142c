#!/usr/bin/env bash
# Local stand-ins for the base images the Dockerfiles and compose.yaml name, for machines whose
# only reachable sources are the package registries (no container registry): a Debian bookworm
# root made with debootstrap from deb.debian.org, imported under the official image's name, and
# images built FROM it. On a machine that can pull from Docker Hub none of this is needed.
#
#   docker.io/library/debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported
#   docker.io/library/rust:1.95-bookworm     that Debian + gcc & co + THIS host's rustup toolchain
#                                            1.95.0 copied in (static.rust-lang.org is out of reach)
#   localhost/gapmeter-smoke-postgres:16     that Debian + Debian's postgresql (15: bookworm's),
#                                            with an entrypoint honouring POSTGRES_PASSWORD/_DB
#
# Idempotent: an image that exists is kept (SMOKE_REBUILD_BASES=1 redoes them); the debootstrap
# tarball is cached under ~/.cache/gapmeter/smoke.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}/smoke"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1.95-bookworm
PG_IMAGE=localhost/gapmeter-smoke-postgres:16
RUST_TOOLCHAIN="${RUST_TOOLCHAIN_DIR:-$HOME/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu}"
mkdir -p "$CACHE_DIR"

have() { [[ "${SMOKE_REBUILD_BASES:-0}" != 1 ]] && podman image exists "$1"; }

if ! have "$DEBIAN_IMAGE"; then
  tarball="$CACHE_DIR/debian-bookworm-minbase.tar"
  if [[ ! -f "$tarball" ]]; then
    root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    # An interrupted debootstrap leaves a half root: build aside, rename only when complete.
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
      { echo "debootstrap failed, see $CACHE_DIR/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
    # What the official -slim image trims: package lists and caches, docs and man pages.
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
      "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
    tar -C "$root" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root"
  fi
  podman import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" localhost/gapmeter-smoke-debian-rootfs:bookworm >/dev/null
  # Where the registries are reached through a TLS-inspecting proxy, its CA is only in this host's
  # trust store: the stand-in carries that bundle (as a local CA, so installing ca-certificates
  # keeps it) and points pip at it, as the host's /etc/pip.conf does. Official images need none.
  ctx="$(mktemp -d)"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-trust.crt"
  cat > "$ctx/Containerfile" <<'CF'
FROM localhost/gapmeter-smoke-debian-rootfs:bookworm
COPY host-trust.crt /usr/local/share/ca-certificates/gapmeter-smoke-host-trust.crt
COPY host-trust.crt /etc/ssl/certs/ca-certificates.crt
RUN printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
CMD ["bash"]
CF
  podman build -q -t "$DEBIAN_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
fi

if ! have "$RUST_IMAGE"; then
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  # -h: the versioned toolchain directory may be a symlink to "stable"; docs are 600 MB of HTML.
  tar -C "$(dirname "$RUST_TOOLCHAIN")" -h --exclude='*/share/doc' -cf "$ctx/toolchain.tar" "$(basename "$RUST_TOOLCHAIN")"
  cp "$here/rust-standin.Containerfile" "$ctx/Containerfile"
  podman build --network host -q -t "$RUST_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
fi

if ! have "$PG_IMAGE"; then
  podman build --network host -q -t "$PG_IMAGE" -f "$here/postgres-standin.Containerfile" "$here" >/dev/null
fi
