#!/usr/bin/env bash
# Builds the compose example's application image without a registry:
#   packaging/docker/compose/app/build.sh [TAG (default cairn-example-app:latest)]
# Its root file system holds this machine's sh, cat, sleep and dig (from
# dnsutils) with the C libraries `ldd` names, and app.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tag=${1:-cairn-example-app:latest}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
fs="$ctx/rootfs"
for tool in sh cat sleep dig; do
    bin=$(command -v "$tool") || { echo "build.sh: $tool not found (dig: apt-get install dnsutils)" >&2; exit 2; }
    bin=$(readlink -f "$bin")
    install -Dm755 "$bin" "$fs/bin/$tool"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        [ -e "$fs$lib" ] || install -Dm755 "$lib" "$fs$lib"
    done
done
install -Dm755 "$here/app.sh" "$fs/app.sh"
install -d -m 755 "$fs/etc"
echo "app:x:10001:10001:app:/:/nonexistent" > "$fs/etc/passwd"
echo "app:x:10001:" > "$fs/etc/group"
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
