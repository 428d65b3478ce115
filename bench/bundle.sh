#!/usr/bin/env bash
# Bundle throughput (issue 3): the proxy's bundle writer against the shell pipeline
# euca-bundle-image runs (tar | sha1 tee | gzip -6 | openssl aes-128-cbc | split), same image bytes.
# Usage: bench/bundle.sh [MIB]   (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-512}"
cargo build --release --quiet --example bundle_throughput
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
target/release/examples/bundle_throughput "$work" "$mib"

mkdir "$work/shell"
key="$(openssl rand -hex 16)"
iv="$(openssl rand -hex 16)"
start="$(date +%s.%N)"
tar -C "$work" -cf - image | tee >(sha1sum >"$work/shell/sha1") | gzip -6 \
    | openssl enc -e -aes-128-cbc -K "$key" -iv "$iv" | split -a 3 -d -b 10M - "$work/shell/image.part."
end="$(date +%s.%N)"
awk -v s="$start" -v e="$end" -v m="$mib" \
    'BEGIN { t = e - s; printf "shell pipeline:      %d MiB in %.2f s = %.1f MiB/s\n", m, t, m / t }'
