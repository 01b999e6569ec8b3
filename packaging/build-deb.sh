#!/usr/bin/env bash
# Builds target/debian/pollhook_<version>_<arch>.deb with cargo-deb
# (`cargo install cargo-deb`). The man page and the bash completion are
# rendered from the CLI definition, so they never drift from it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
mkdir -p target/pkg
target/release/pollhook manpage | gzip -9n > target/pkg/pollhook.1.gz
target/release/pollhook completions bash > target/pkg/pollhook.bash
cargo deb --no-build --locked --strip "$@"
