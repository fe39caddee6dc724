#!/usr/bin/env bash
# Builds the cairn image without a registry:
#   packaging/docker/build.sh [BIN (default target/release/cairn)] [TAG (default cairn:latest)]
# The root file system holds the binary, the C libraries `ldd` names, and
# /etc/passwd and /etc/group for the numeric user 10001 (cairn).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/cairn}
tag=${2:-cairn:latest}
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable (cargo build --release -p cairn-agent)" >&2; exit 2; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
fs="$ctx/rootfs"
install -Dm755 "$bin" "$fs/usr/bin/cairn"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    install -Dm755 "$lib" "$fs$lib"
done
install -d -m 755 "$fs/etc"
echo "cairn:x:10001:10001:cairn:/var/lib/cairn:/nonexistent" > "$fs/etc/passwd"
echo "cairn:x:10001:" > "$fs/etc/group"
install -d -m 1777 "$fs/tmp"
for d in var/lib/cairn run/cairn srv/rendered; do
    install -d -m 755 "$ctx/owned/$d"
done
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
