#!/usr/bin/env bash
# Builds target/debian/pollhook_<version>_<arch>.deb with cargo-deb
# (`cargo install cargo-deb`). The man page and the bash completion are
# rendered from the CLI definition, so they never drift from it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
# The package metadata reads target/pkg; the binary may be built elsewhere.
bin="${CARGO_TARGET_DIR:-target}/release/pollhook"
mkdir -p target/pkg
"$bin" manpage | gzip -9n > target/pkg/pollhook.1.gz
"$bin" completions bash > target/pkg/pollhook.bash
cargo deb --no-build --locked --strip "$@"
