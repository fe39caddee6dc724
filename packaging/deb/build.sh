#!/usr/bin/env bash
# Builds the Debian package from a built binary:
#   packaging/deb/build.sh [BIN (default target/release/cairn)] [OUTDIR (default target/debian)]
# DEB_COMPRESS=xz|gzip|zstd|none picks dpkg-deb's compression (default xz).
# Prints the path of the .deb.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/cairn}
out=${2:-$root/target/debian}
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable (cargo build --release -p cairn-agent)" >&2; exit 2; }
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -Dm755 "$bin" "$stage/usr/bin/cairn"
install -Dm644 "$here/../systemd/cairn.service" "$stage/lib/systemd/system/cairn.service"
install -Dm644 "$here/../systemd/cairn.sysusers" "$stage/usr/lib/sysusers.d/cairn.conf"
install -Dm644 "$here/../systemd/cairn.tmpfiles" "$stage/usr/lib/tmpfiles.d/cairn.conf"
install -Dm644 "$here/../cairn.toml" "$stage/etc/cairn/cairn.toml"
install -Dm644 "$root/README.md" "$stage/usr/share/doc/cairn/README.md"
install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: cairn
Version: $version
Architecture: $arch
Maintainer: cairn developers <cairn@localhost>
Depends: libc6
Section: database
Priority: optional
Description: etcd-compatible key-value store agent
 One agent per host: a Raft voter, a learner read replica or a proxy,
 serving the etcd v3 and v2 APIs, rendering files from keys, answering
 DNS from keys and registering the host's services under leases.
CONTROL
echo /etc/cairn/cairn.toml > "$stage/DEBIAN/conffiles"
install -m755 "$here/postinst" "$stage/DEBIAN/postinst"
install -m755 "$here/postrm" "$stage/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/cairn_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
