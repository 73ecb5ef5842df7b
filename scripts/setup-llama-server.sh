#!/usr/bin/env bash
# Optional: llama-cpp-python's OpenAI-compatible server in .venv, for tests/test_llama_server.py and for
# serving the embedded GGUF (`python -m llama_cpp.server --model GGUF --logits_all true`). Not part of
# scripts/setup.sh: llama.cpp compiles from source (~5-10 minutes on 2 cores). The wheel is built once into
# ~/.cache/cai/wheels and reused. The build is not tuned to the CPU (GGML_NATIVE=OFF, AVX-512 on): the
# native build segfaulted on its first completion on an Intel AMX CPU. Set CMAKE_ARGS to build otherwise
# (delete the cached wheel first).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
WHEELS=${CAI_WHEELS:-$HOME/.cache/cai/wheels}
[ -x .venv/bin/python ] || bash scripts/setup.sh
mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION (several minutes) into $WHEELS"
  CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX512=ON"} \
    .venv/bin/python -m pip --disable-pip-version-check wheel -q --no-deps "llama-cpp-python==$VERSION" -w "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl | head -1)
fi
# the wheel without its build, then its dependencies and the [server] extra's from PyPI
.venv/bin/python -m pip --disable-pip-version-check install -q --no-deps "$wheel"
.venv/bin/python -m pip --disable-pip-version-check install -q "diskcache>=5.6.1" "uvicorn>=0.22.0" \
  "fastapi>=0.100.0" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4"
.venv/bin/python -c "import llama_cpp, llama_cpp.server.app; print('llama-cpp-python', llama_cpp.__version__, 'with its server')"
