"""Write the reference gradients that gradient/tests/models.rs checks against.

Run from anywhere: `python3 gradient/reference/make_fixtures.py`. It needs
PyTorch, onnx, onnxruntime, Pillow and the packages in models/requirements.txt;
the Rust tests that read its output need none of them.

For each model it writes gradient/tests/fixtures/<model>/: a manifest.json,
the model itself for the small generated architectures, and raw little-endian
arrays (`.bin`) of inputs, seeds and PyTorch autograd gradients. The scalar
differentiated for each input is dot(seed, logits), where the seed is the
top-1 class, a class outside the top 5, or a random weight vector over classes.
Each model also names one intermediate tensor, found in the ONNX graph by
matching its values against a PyTorch forward hook, with its gradient.

Models:
  resnet-mini     residual blocks, unfused BatchNormalization, overlapping
                  MaxPool; torch.export-based exporter, opset 18, no optimizer
  mobilenet-mini  inverted residuals with depthwise convolutions, ReLU6 (Clip)
                  and Hardswish; TorchScript exporter, opset 11, so attribute
                  forms of the older opsets and no value_info at all
  nhwc-softmax    channels-last input, LeakyReLU, AveragePool, SiLU, Tanh and a
                  final Softmax; TorchScript exporter, opset 13
  mnist-cnn       the bundled models/mnist-cnn.onnx, on test digits
  efficientnet-lite0  the bundled model, on the test photos; its arrays are
                  stored as float16 scaled by their max magnitude to stay small
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "gradient" / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "models"))

SEED = 1234


def conv_bn(cin, cout, stride=1, groups=1, kernel=3):
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """A pre-activation residual block: BatchNormalization follows the Add, so
    no exporter can fold it into a convolution."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
        )

    def forward(self, x):
        return x + self.body(self.norm(x))


class ResNetMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8)
        self.down = nn.Conv2d(8, 16, 3, 2, 1)
        self.layer2 = BasicBlock(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer2(self.down(self.layer1(self.pool(self.stem(x)))))
        return self.head(torch.relu(x).mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, activation):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, kernel=1),
            activation(),
            *conv_bn(hidden, hidden, stride, groups=hidden),
            activation(),
            *conv_bn(hidden, cout, kernel=1),
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetMini(nn.Module):
    def __init__(self, classes=12):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 2), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 2, nn.ReLU6),
            InvertedResidual(8, 12, 2, 3, nn.Hardswish),
            InvertedResidual(12, 12, 1, 3, nn.Hardswish),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class NhwcSoftmax(nn.Module):
    """Takes [N, H, W, C] like a Keras model and ends in Softmax."""

    def __init__(self, classes=7):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 10, 3, 2, 1),
            nn.SiLU(),
            nn.Conv2d(10, 10, 3, 1, 1),
            nn.Tanh(),
        )
        self.head = nn.Linear(10 * 3 * 3, classes)

    def logits(self, x):
        x = self.features(x.permute(0, 3, 1, 2))
        return self.head(x.flatten(1))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=-1)


def randomize_batch_norm(model):
    """Give every BatchNorm non-trivial statistics, so folding them matters."""
    generator = torch.Generator().manual_seed(SEED)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def export_dynamo(model, example, path, opset):
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        external_data=False,
        optimize=False,
    )
    program.save(str(path), external_data=False)
    strip_metadata(path)


def export_torchscript(model, example, path, opset):
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    strip_metadata(path)


def strip_metadata(path):
    """Drop exporter stack traces, which name paths of this machine."""
    model = onnx.load(str(path))
    del model.graph.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def find_tensor(onnx_path, input_name, x, activation):
    """The name of the ONNX tensor whose value matches a PyTorch activation."""
    model = onnx.load(str(onnx_path))
    known = {i.name for i in model.graph.initializer}
    names = [o for n in model.graph.node if n.op_type not in ("Constant", "Identity") for o in n.output if o]
    names = [n for n in names if n not in known]
    del model.graph.output[:]
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    values = session.run(None, {input_name: x})
    target = activation.detach().numpy()
    scale = np.abs(target).max()
    for name, value in zip(names, values):
        if value.shape == target.shape and np.abs(value - target).max() < 1e-4 * scale:
            return name
    raise SystemExit(f"no tensor of {onnx_path} matches the hooked activation")


def seeds_for(logits, generator):
    """Top-1 class, a class outside the top 5, and a random weight vector."""
    order = np.argsort(-logits)
    outside = int(order[max(5, len(order) // 2)])
    weights = torch.randn(len(logits), generator=generator).numpy().astype(np.float32)
    return [("top-1", int(order[0]), None), ("outside-top-5", outside, None), ("weights", None, weights)]


class Writer:
    """Writes raw arrays and remembers their manifest entries."""

    def __init__(self, folder, half):
        self.folder = folder
        self.half = half
        folder.mkdir(parents=True, exist_ok=True)

    def array(self, name, values, exact=False):
        """Store `values`; `exact` ones (already float16 values) are not rescaled."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        entry = {"file": f"{name}.bin", "shape": list(values.shape)}
        if self.half:
            scale = 1.0 if exact else float(np.abs(values).max()) or 1.0
            (values / scale).astype("<f2").tofile(self.folder / entry["file"])
            entry.update(dtype="f16", scale=scale)
        else:
            values.astype("<f4").tofile(self.folder / entry["file"])
            entry.update(dtype="f32", scale=1.0)
        return entry


def make_fixture(name, model, onnx_rel, inputs, hook_module, logits_fn=None, half=False):
    """Compute references for `inputs` (a list of [1, ...] arrays) and write them."""
    folder = FIXTURES / name
    writer = Writer(folder, half)
    onnx_path = ROOT / "gradient" / onnx_rel
    logits_fn = logits_fn or model
    generator = torch.Generator().manual_seed(SEED)
    # References run in float64, so they carry no rounding of their own and
    # the tolerance covers ONNX Runtime's float32 rounding only.
    model.double()

    captured = {}
    hook = hook_module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    cases = []
    intermediate = None
    for k, x in enumerate(inputs):
        if half:
            # Round the input to float16 before computing the reference, and
            # store it unscaled, so the test runs exactly the input the
            # reference saw: EfficientNet-Lite0's gradient moves by cosine 0.99
            # under input changes of 1e-4, as ReLU6 inputs cross their kinks.
            x = x.astype(np.float16).astype(np.float32)
        input_entry = writer.array(f"input{k}", x, exact=True)
        x64 = torch.from_numpy(x.astype(np.float64))
        with torch.no_grad():
            logits = logits_fn(x64)[0].numpy()
        if intermediate is None:
            with torch.no_grad():
                logits_fn(x64)
            intermediate = find_tensor(onnx_path, "input", x, captured["a"].float())
        for label, index, weights in seeds_for(logits, generator):
            seed = np.zeros(len(logits), np.float32) if weights is None else weights
            if index is not None:
                seed[index] = 1.0
            if half:
                seed = seed.astype(np.float16).astype(np.float32)
            tensor = x64.clone().requires_grad_(True)
            out = logits_fn(tensor)
            activation = captured["a"]
            activation.retain_grad()
            (out[0] * torch.from_numpy(seed.astype(np.float64))).sum().backward()
            case = {
                "input": input_entry,
                "seed_kind": label,
                "gradient": writer.array(f"gradient{k}_{label}", tensor.grad.numpy()),
                "intermediate_gradient": writer.array(f"intermediate{k}_{label}", activation.grad.numpy()),
            }
            if index is not None:
                case["class"] = index
            else:
                case["seed"] = writer.array(f"seed{k}", seed[None, :], exact=True)
            cases.append(case)
    hook.remove()
    manifest = {
        "model": onnx_rel,
        "input": "input",
        "classes": int(len(logits)),
        "intermediate": intermediate,
        "cases": cases,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{name}: intermediate `{intermediate}`, {len(cases)} cases")


def random_inputs(shape, count=3):
    generator = torch.Generator().manual_seed(SEED + 1)
    return [torch.randn(1, *shape, generator=generator).numpy() for _ in range(count)]


def generated_models():
    torch.manual_seed(SEED)
    resnet = randomize_batch_norm(ResNetMini())
    path = FIXTURES / "resnet-mini" / "resnet-mini.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_dynamo(resnet, torch.randn(2, 3, 32, 32), path, 18)
    make_fixture("resnet-mini", resnet, "tests/fixtures/resnet-mini/resnet-mini.onnx",
                 random_inputs((3, 32, 32)), resnet.layer1)

    torch.manual_seed(SEED + 2)
    mobilenet = randomize_batch_norm(MobileNetMini())
    path = FIXTURES / "mobilenet-mini" / "mobilenet-mini.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_torchscript(mobilenet, torch.randn(1, 3, 24, 24), path, 11)
    make_fixture("mobilenet-mini", mobilenet, "tests/fixtures/mobilenet-mini/mobilenet-mini.onnx",
                 random_inputs((3, 24, 24)), mobilenet.blocks[1])

    torch.manual_seed(SEED + 3)
    nhwc = NhwcSoftmax().eval()
    path = FIXTURES / "nhwc-softmax" / "nhwc-softmax.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_torchscript(nhwc, torch.randn(1, 12, 12, 3), path, 13)
    make_fixture("nhwc-softmax", nhwc, "tests/fixtures/nhwc-softmax/nhwc-softmax.onnx",
                 random_inputs((12, 12, 3)), nhwc.features[1], logits_fn=nhwc.logits)


def bundled_models():
    from mnist_net import MnistNet
    from preprocess import load_declaration, to_tensor

    mnist = MnistNet()
    mnist.load_state_dict(torch.load(ROOT / "models" / "mnist-cnn.pt"))
    mnist.eval()
    declaration = load_declaration(ROOT / "models" / "mnist-cnn.toml")
    digits = ["3-1.png", "7-1.png", "0-2.png"]
    inputs = [to_tensor(Image.open(ROOT / "tests" / "data" / "mnist" / d), declaration) for d in digits]
    # Digits have flat backgrounds, so max-pooling windows hold exact ties:
    # both PyTorch and the derived graph must send a tie's gradient to the
    # first maximum in row-major order, which this fixture checks.
    make_fixture("mnist-cnn", mnist, "../models/mnist-cnn.onnx", inputs, mnist.features[2])

    from export_efficientnet import load_model

    efficientnet = load_model()
    declaration = load_declaration(ROOT / "models" / "efficientnet-lite0.toml")
    photos = ["chelsea.png", "coffee.png", "rocket.png"]
    inputs = [to_tensor(Image.open(ROOT / "tests" / "data" / "photos" / p), declaration) for p in photos]
    make_fixture("efficientnet-lite0", efficientnet, "../models/efficientnet-lite0.onnx", inputs,
                 efficientnet._blocks[12], half=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    generated_models()
    bundled_models()
