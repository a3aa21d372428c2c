# Shared by the scripts in this folder: installs what is missing, idempotently.
# Sourced, not run.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORT_VERSION="1.31.1"
ORT_DIR="$ROOT/.cache/onnxruntime"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
export ORT_DYLIB_PATH="$ORT_LIB"

log() { printf '==> %s\n' "$*" >&2; }

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        log "adding the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

# ONNX Runtime comes from the PyPI wheel: only its shared library is used,
# which needs libc and libstdc++, not Python.
ensure_onnxruntime() {
    if [[ -f "$ORT_LIB" ]]; then
        return
    fi
    log "fetching ONNX Runtime $ORT_VERSION from the PyPI wheel"
    local wheels="$ROOT/.cache/wheels"
    mkdir -p "$wheels" "$ORT_DIR"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        "onnxruntime==$ORT_VERSION" -d "$wheels"
    local wheel
    wheel="$(ls "$wheels"/onnxruntime-"$ORT_VERSION"-*.whl | head -n 1)"
    python3 - "$wheel" "$ORT_LIB" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
member = "onnxruntime/capi/libonnxruntime.so." + target.rsplit(".so.", 1)[1]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
    with open(target + ".part", "wb") as out:
        shutil.copyfileobj(source, out)
import os
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
}

# Builds every bundled plugin into the shared target directory and copies
# each component to plugins/<crate-name>.wasm.
build_plugins() {
    log "building the bundled plugins"
    (cd "$ROOT/plugins" && cargo build --release --quiet)
    local out="$ROOT/target/plugins/wasm32-wasip2/release"
    local crate
    for crate in $(plugin_crates); do
        local file="$out/${crate//-/_}.wasm"
        # cp to a temporary name then mv, so a running server never loads
        # half a file.
        cp "$file" "$ROOT/plugins/.$crate.wasm.tmp"
        mv "$ROOT/plugins/.$crate.wasm.tmp" "$ROOT/plugins/$crate.wasm"
    done
}

plugin_crates() {
    local dir
    for dir in "$ROOT"/plugins/*/; do
        if [[ -f "$dir/Cargo.toml" ]]; then
            basename "$dir"
        fi
    done
}

# Builds the hostile test plugins of tests/plugins/ (their own workspace,
# same target directory as the bundled plugins) and copies each component to
# target/hostile-plugins/<crate-name>.wasm, where tests/tests/sandbox.rs
# finds them.
build_hostile_plugins() {
    log "building the hostile test plugins"
    (cd "$ROOT/tests/plugins" && cargo build --release --quiet)
    local out="$ROOT/target/plugins/wasm32-wasip2/release"
    local dest="$ROOT/target/hostile-plugins"
    mkdir -p "$dest"
    local dir crate
    for dir in "$ROOT"/tests/plugins/*/; do
        if [[ -f "$dir/Cargo.toml" ]]; then
            crate="$(basename "$dir")"
            cp "$out/${crate//-/_}.wasm" "$dest/$crate.wasm"
        fi
    done
}
