"""Check derived gradients on torchvision's classifier architectures.

The Rust tests compare five models with stored PyTorch references. This
script covers the full-size architectures that image classifiers are
usually exported from, whose ONNX files are too large to store. It builds
each one from torchvision with seeded random weights (no download) and
exports it. Then it derives the gradient model with `picasso
gradient-model` and compares the input gradients with PyTorch autograd in
float32.

    pip install --no-deps torchvision==0.29.2
    cargo build --release -p picasso
    ORT_DYLIB_PATH=$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1 \\
        python3 gradient/reference/check_torchvision.py

It needs PyTorch, torchvision, onnx and onnxruntime; the tests need none of
them. Prints a Markdown table and exits with status 1 when a model fails.

Per model, two inputs of uniform noise at 224 x 224 and two seeds per input
(the top-1 class, and a random weight vector over the classes). The bar is
the one `tests/models.rs` sets: cosine similarity at least 0.9999 and
relative L2 error at most 1e-2. Random weights make some networks' logits
nearly equal across classes, which is fine here: the gradient is checked,
not the classification.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
PICASSO = ROOT / "target" / "release" / "picasso"

MIN_COSINE = 0.9999
MAX_RELATIVE_L2 = 1e-2


def vgg11_small_head() -> nn.Module:
    """VGG-11 with batch norm, its classifier narrowed from 4096 to 256 units.

    The full head has about 124 million weights (about 500 MB of ONNX). The
    narrowed one keeps every operator type: Linear, ReLU and Dropout after
    the adaptive pooling and flattening.
    """
    net = torchvision.models.vgg11_bn()
    net.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 256),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(256, 256),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(256, 1000),
    )
    return net


# (name, constructor, ONNX opset). Opsets vary so that both operator forms
# (attributes before 13, inputs after) meet real architectures.
ARCHITECTURES = [
    ("resnet18", torchvision.models.resnet18, 17),
    ("vgg11_bn (narrow head)", vgg11_small_head, 13),
    ("mobilenet_v2", torchvision.models.mobilenet_v2, 11),
    ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small, 17),
    ("efficientnet_b0", torchvision.models.efficientnet_b0, 17),
    ("squeezenet1_1", torchvision.models.squeezenet1_1, 12),
    ("densenet121", torchvision.models.densenet121, 17),
    ("shufflenet_v2_x0_5", torchvision.models.shufflenet_v2_x0_5, 17),
    ("regnet_x_400mf", torchvision.models.regnet_x_400mf, 17),
]


def agreement(derived: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    a = derived.ravel().astype(np.float64)
    b = reference.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    relative_l2 = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return cosine, relative_l2


def export(net: nn.Module, path: Path, opset: int) -> None:
    example = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    onnx.checker.check_model(str(path))


def derive(model: Path, out: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [str(PICASSO), "gradient-model", str(model), "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or result.stdout.strip())
    return time.perf_counter() - started


def check(name: str, build, opset: int, folder: Path, rng: np.random.Generator) -> dict:
    torch.manual_seed(0)
    net = build().eval()
    model = folder / "model.onnx"
    gradient_model = folder / "model.gradient.onnx"
    export(net, model, opset)
    seconds = derive(model, gradient_model)

    session = ort.InferenceSession(str(gradient_model), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    seed_name = next(n for n in names if n != "input")
    worst_cosine, worst_l2 = 1.0, 0.0
    for _ in range(2):
        x = rng.uniform(-2.0, 2.0, size=(1, 3, 224, 224)).astype(np.float32)
        source = torch.from_numpy(x).requires_grad_(True)
        logits = net(source)
        top1 = torch.zeros_like(logits)
        top1[0, int(logits.argmax())] = 1.0
        mixed = torch.from_numpy(rng.standard_normal(logits.shape).astype(np.float32))
        for seed in (top1, mixed):
            (reference,) = torch.autograd.grad((logits * seed).sum(), source, retain_graph=True)
            outputs = session.run(None, {"input": x, seed_name: seed.numpy()})
            cosine, l2 = agreement(outputs[1], reference.numpy())
            worst_cosine, worst_l2 = min(worst_cosine, cosine), max(worst_l2, l2)
    return {
        "name": name,
        "opset": opset,
        "nodes": len(onnx.load(str(model), load_external_data=False).graph.node),
        "derive_s": seconds,
        "cosine": worst_cosine,
        "relative_l2": worst_l2,
        "ok": worst_cosine >= MIN_COSINE and worst_l2 <= MAX_RELATIVE_L2,
    }


def main() -> int:
    if not PICASSO.exists():
        print(f"{PICASSO} is missing; run `cargo build --release -p picasso`", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    rng = np.random.default_rng(7)
    rows = []
    for name, build, opset in ARCHITECTURES:
        with tempfile.TemporaryDirectory() as folder:
            try:
                row = check(name, build, opset, Path(folder), rng)
            except Exception as error:  # noqa: BLE001 - reported per model
                row = {"name": name, "opset": opset, "error": str(error).splitlines()[0]}
        print(f"{name}: {row}", file=sys.stderr, flush=True)
        rows.append(row)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"onnxruntime {ort.__version__}\n")
    print("| architecture | opset | ONNX nodes | `gradient-model` run | worst cosine | worst relative L2 | result |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for row in rows:
        if "error" in row:
            failed = True
            print(f"| {row['name']} | {row['opset']} | | | | | error: {row['error']} |")
            continue
        failed |= not row["ok"]
        print(f"| {row['name']} | {row['opset']} | {row['nodes']} | {row['derive_s']:.2f} s "
              f"| {row['cosine']:.7f} | {row['relative_l2']:.1e} | {'pass' if row['ok'] else 'FAIL'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
