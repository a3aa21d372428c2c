"""Export a PyTorch classifier to the ONNX form the `picasso` host loads.

Every bundled model has one input `input` and one output `logits`, a dynamic
batch dimension and ONNX opset 18, with all weights inside the .onnx file.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 18

# Ops that only training needs. The host derives gradient graphs from the
# inference graph, so an exported model must contain none of them, even
# though ONNX Runtime would run an inference-mode Dropout as identity.
TRAINING_OPS = {"Dropout", "BatchNormalization"}


def export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export `module` (in eval mode) to `path`, batch dimension dynamic."""
    module.eval()
    batch = torch.export.Dim("batch", min=1)
    # `external_data=False` keeps the weights in the .onnx file itself, so
    # the model is one file. `optimize=True` folds batch normalization into
    # the convolutions and drops Dropout.
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        external_data=False,
        optimize=True,
    )
    program.save(str(path), external_data=False)

    model = onnx.load(str(path))
    strip_metadata(model)
    onnx.save(model, str(path))
    check_graph(path)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's debugging metadata from `model`.

    The exporter records Python stack traces (with the absolute paths of the
    installed packages) and FX node names on every node. They would make the
    file depend on the machine that wrote it.
    """
    graph = model.graph
    del graph.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del value.metadata_props[:]


def check_graph(path: Path) -> None:
    """Raise if the saved model is invalid or still has training-only ops."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    found = {node.op_type for node in model.graph.node} & TRAINING_OPS
    if found:
        raise RuntimeError(f"{path} still contains training-only ops {sorted(found)}")
    opset = {entry.domain: entry.version for entry in model.opset_import}
    if opset.get("", opset.get("ai.onnx")) != OPSET:
        raise RuntimeError(f"{path} has opsets {opset}, expected ai.onnx {OPSET}")


def describe(path: Path) -> str:
    """Summarize the op types, opsets and size of a saved model."""
    model = onnx.load(str(path))
    ops = sorted({node.op_type for node in model.graph.node})
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    size_mb = path.stat().st_size / 1e6
    return f"{path.name}: {size_mb:.1f} MB, opsets {opsets}, ops {ops}"


def max_abs_diff(module: torch.nn.Module, path: Path, batch: np.ndarray) -> float:
    """Run PyTorch and ONNX Runtime on `batch` and compare their logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": batch.astype(np.float32)})
    with torch.no_grad():
        torch_logits = module(torch.from_numpy(batch.astype(np.float32))).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())
