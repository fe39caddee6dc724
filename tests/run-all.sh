#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh Debian machine,
# installing what the tests need (Debian's etcd as the reference server,
# etcdctl as an independent client, protoc for the etcd-client crate, dig and
# kdig for the DNS tests, systemd-analyze to verify the unit, curl, ip and
# unshare for the docs pages).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v dig >/dev/null || need+=(dnsutils)
command -v kdig >/dev/null || need+=(knot-dnsutils)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The docs pages (tests/tests/it/docs.rs) use curl, and run in namespaces
# made by unshare whose loopback `ip` brings up.
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# One build of everything; the test binaries below share it.
cargo build --workspace --all-targets
cargo test --workspace
# The simulator's rig: bugs planted in the consensus code (a test-only
# feature) must each be caught by some seed.
cargo test -p cairn-sim --features planted-bugs rig::
# The same black-box cases against Debian's etcd: every expectation the
# suite holds cairn to is checked against the real thing.
CONFORMANCE_SUBJECT=etcd cargo test -p cairn-tests
