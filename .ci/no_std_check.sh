#!/usr/bin/env bash
# The no_std core (manifest decoding + selection policy) must build for an MCU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p tailor-runtime --no-default-features --target thumbv7em-none-eabihf
