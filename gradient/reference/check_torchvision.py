"""Check derived gradients on torchvision's classifier architectures.

The Rust tests compare five models with stored PyTorch references. This
script covers the full-size architectures that image classifiers are
usually exported from, whose ONNX files are too large to store. It builds
each one from torchvision with seeded random weights (no download) and
exports it. Then it derives the gradient model with `picasso
gradient-model` and compares the input gradients with PyTorch autograd in
float64, as the stored fixtures do. (Against float32 autograd, rounding on
both sides alone moved GoogLeNet's gradient by 1.5% in relative L2.)

    pip install --no-deps torchvision==0.29.2
    cargo build --release -p picasso
    ORT_DYLIB_PATH=$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1 \\
        python3 gradient/reference/check_torchvision.py

It needs PyTorch, torchvision, onnx and onnxruntime; the tests need none of
them. Prints a Markdown table and exits with status 1 when a model fails.

Per model, three inputs of uniform noise at 224 x 224 and two seeds per
input (the top-1 class, and a random weight vector over the classes), each
compared with float64 autograd. Float32 rounding flips ReLU and max pooling decisions near their
thresholds, in ONNX Runtime and in PyTorch alike, and a flip moves the
gradient by a step that depends on the network. In one run on randomly
initialized GoogLeNet, the derived gradient's six cases were 2.5e-4 to
1.7e-2 off in relative L2, and PyTorch's own float32 autograd was 4.5e-3 to
1.4e-2 off on the same cases. So a model passes when the median of its
cases is within 1e-4 of the float64 gradient, or at least as close as twice
PyTorch float32's median, and no case is more than 5e-2 off (no systematic
error). The table gives both medians and the worst case.
Random weights are fine here: the gradient is checked, not the
classification.
"""

import copy
import os
import statistics
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

# Bars on the relative L2 error against float64 autograd (see above).
MEDIAN_L2 = 1e-4
WORST_CASE_L2 = 5e-2


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


# (name, constructor, ONNX opset, run ONNX shape inference first). Opsets
# vary so that both operator forms (attributes before 13, inputs after) meet
# real architectures. Swin's exported graph computes its reshape targets at
# run time and records no shapes, so the engine's own shape inference cannot
# follow it. `onnx.shape_inference.infer_shapes` fills them in, as the
# engine's error message advises.
ARCHITECTURES = [
    ("resnet18", torchvision.models.resnet18, 17, False),
    ("vgg11_bn (narrow head)", vgg11_small_head, 13, False),
    ("googlenet", lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False), 17, False),
    ("inception_v3", lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=False), 17, False),
    ("mobilenet_v2", torchvision.models.mobilenet_v2, 11, False),
    ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small, 17, False),
    ("mnasnet0_5", torchvision.models.mnasnet0_5, 17, False),
    ("efficientnet_b0", torchvision.models.efficientnet_b0, 17, False),
    ("squeezenet1_1", torchvision.models.squeezenet1_1, 12, False),
    ("densenet121", torchvision.models.densenet121, 17, False),
    ("shufflenet_v2_x0_5", torchvision.models.shufflenet_v2_x0_5, 17, False),
    ("regnet_x_400mf", torchvision.models.regnet_x_400mf, 17, False),
    ("convnext_tiny", torchvision.models.convnext_tiny, 17, False),
    ("swin_t", torchvision.models.swin_t, 17, True),
]


def relative_l2(derived: np.ndarray, reference: np.ndarray) -> float:
    a = derived.ravel().astype(np.float64)
    b = reference.ravel().astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def export(net: nn.Module, path: Path, opset: int, infer_shapes: bool) -> None:
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
    if infer_shapes:
        onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(path))), str(path))


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


def check(
    name: str, build, opset: int, infer_shapes: bool, folder: Path, rng: np.random.Generator
) -> dict:
    torch.manual_seed(0)
    net = build().eval()
    model = folder / "model.onnx"
    gradient_model = folder / "model.gradient.onnx"
    export(net, model, opset, infer_shapes)
    seconds = derive(model, gradient_model)

    reference_net = copy.deepcopy(net).double()
    session = ort.InferenceSession(str(gradient_model), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    seed_name = next(n for n in names if n != "input")
    errors, float32_errors = [], []
    for _ in range(3):
        x = rng.uniform(-2.0, 2.0, size=(1, 3, 224, 224)).astype(np.float32)
        source = torch.from_numpy(x).double().requires_grad_(True)
        logits = reference_net(source)
        top1 = torch.zeros_like(logits)
        top1[0, int(logits.argmax())] = 1.0
        mixed = torch.from_numpy(rng.standard_normal(logits.shape))
        source32 = torch.from_numpy(x).requires_grad_(True)
        logits32 = net(source32)
        for seed in (top1, mixed):
            (reference,) = torch.autograd.grad((logits * seed).sum(), source, retain_graph=True)
            (float32,) = torch.autograd.grad(
                (logits32 * seed.float()).sum(), source32, retain_graph=True
            )
            feeds = {"input": x, seed_name: seed.numpy().astype(np.float32)}
            derived = session.run(None, feeds)[1]
            errors.append(relative_l2(derived, reference.numpy()))
            float32_errors.append(relative_l2(float32.numpy(), reference.numpy()))
    return {
        "name": name,
        "opset": opset if not infer_shapes else f"{opset}, shapes inferred",
        "nodes": len(onnx.load(str(model), load_external_data=False).graph.node),
        "derive_s": seconds,
        "median": statistics.median(errors),
        "worst": max(errors),
        "float32_median": statistics.median(float32_errors),
        "ok": statistics.median(errors)
        <= max(MEDIAN_L2, 2 * statistics.median(float32_errors))
        and max(errors) <= WORST_CASE_L2,
    }


def main() -> int:
    if not PICASSO.exists():
        print(f"{PICASSO} is missing; run `cargo build --release -p picasso`", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    rng = np.random.default_rng(7)
    rows = []
    for name, build, opset, infer_shapes in ARCHITECTURES:
        with tempfile.TemporaryDirectory() as folder:
            try:
                row = check(name, build, opset, infer_shapes, Path(folder), rng)
            except Exception as error:  # noqa: BLE001 - reported per model
                row = {"name": name, "opset": opset, "error": str(error).splitlines()[0]}
        print(f"{name}: {row}", file=sys.stderr, flush=True)
        rows.append(row)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"onnxruntime {ort.__version__}\n")
    print("| architecture | opset | ONNX nodes | `gradient-model` run | median | worst case "
          "| PyTorch float32, median | result |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for row in rows:
        if "error" in row:
            failed = True
            print(f"| {row['name']} | {row['opset']} | | | | | | error: {row['error']} |")
            continue
        failed |= not row["ok"]
        print(f"| {row['name']} | {row['opset']} | {row['nodes']} | {row['derive_s']:.2f} s "
              f"| {row['median']:.1e} | {row['worst']:.1e} | {row['float32_median']:.1e} "
              f"| {'pass' if row['ok'] else 'FAIL'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
