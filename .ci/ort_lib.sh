#!/usr/bin/env bash
# Prints the libonnxruntime.so of the onnxruntime wheel (ort's load-dynamic opens it).
set -euo pipefail
dir=$(python3 -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))") || {
    echo "the onnxruntime Python wheel is not installed (pip install onnxruntime==1.31.1)" >&2
    exit 1
}
lib=$(ls "$dir"/libonnxruntime.so.* 2>/dev/null | head -n 1)
[ -n "$lib" ] || { echo "no libonnxruntime.so.* in $dir" >&2; exit 1; }
echo "$lib"
