#!/usr/bin/env bash
# Runs client.py against an idguard server at HOST:PORT: a virtual environment with grpcio and
# grpcio-tools (kept in the build cache, so repeat runs are quick), stubs generated from proto/
# into a temporary directory, then the client.
set -euo pipefail
target=${1:?usage: run.sh HOST:PORT}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${IDGUARD_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/idguard/python-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
stubs=$(mktemp -d)
trap 'rm -rf "$stubs"' EXIT
"$venv/bin/python" -m grpc_tools.protoc -I "$repo/proto" \
    --python_out="$stubs" --grpc_python_out="$stubs" \
    "$repo/proto/idguard/v1/idguard.proto" "$repo/proto/google/rpc/status.proto"
exec "$venv/bin/python" "$here/client.py" "$target" "$stubs"
