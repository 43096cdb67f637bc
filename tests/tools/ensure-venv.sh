#!/usr/bin/env bash
# Creates (or reuses) the Python venv holding the tools the tests drive: moto server, the AWS CLI,
# cfn-lint, cargo-lambda and zig. The venv is reused only when it was built from exactly this
# requirements file; otherwise it is rebuilt. Prints the venv's path on stdout.
#
#   TOKENFENCE_VENV   where the venv lives (default: <repo>/.venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${TOKENFENCE_VENV:-$repo/.venv}"
req="$here/requirements.txt"
stamp="$venv/.tokenfence-requirements"

python="$(command -v python3 || true)"
[ -n "$python" ] || { echo "ensure-venv: python3 is required to install the test tools" >&2; exit 1; }

ready() { [ -f "$stamp" ] && cmp -s "$req" "$stamp" && [ -x "$venv/bin/cfn-lint" ]; }
if ready; then
  echo "$venv"
  exit 0
fi

# Test binaries run in parallel; only one of them installs.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ready; then
  echo "$venv"
  exit 0
fi

echo "ensure-venv: installing test tools into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
cp "$req" "$stamp"
echo "$venv"
