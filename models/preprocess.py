"""Preprocess images as a model declaration (`models/<id>.toml`) describes.

This is the Python reading of the declaration format that the `picasso` host
implements in Rust. The export and training scripts use it to check that a
declaration, its labels and its ONNX file agree on real images.

Resizing uses PIL's bilinear filter, which widens its support when it
downscales. The host uses the `image` crate's triangle filter, which does the
same, so both give close but not bit-identical pixels.
"""

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_declaration(path: Path) -> dict:
    """Read a model declaration and resolve its file paths against its folder."""
    with open(path, "rb") as file:
        declaration = tomllib.load(file)
    folder = Path(path).parent
    declaration["onnx"] = folder / declaration["onnx"]
    declaration["labels"] = folder / declaration["labels"]
    return declaration


def load_labels(declaration: dict) -> list[str]:
    return declaration["labels"].read_text(encoding="utf-8").splitlines()


def resize(image: Image.Image, spec: dict) -> Image.Image:
    """Apply the declaration's `resize` mode ("stretch" or "center-crop")."""
    width, height = spec["width"], spec["height"]
    if spec["resize"] == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    if spec["resize"] != "center-crop":
        raise ValueError(f"unknown resize mode {spec['resize']!r}")

    # Scale the shorter side to `resize-shorter` (default: the crop's
    # shorter side), then cut the centered width x height window.
    shorter = spec.get("resize-shorter", min(width, height))
    scale = shorter / min(image.size)
    scaled_size = (
        max(width, round(image.width * scale)),
        max(height, round(image.height * scale)),
    )
    scaled = image.resize(scaled_size, Image.Resampling.BILINEAR)
    left = (scaled.width - width) // 2
    top = (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image, declaration: dict) -> np.ndarray:
    """Turn one image into a batch of one, laid out as the model's input."""
    spec = declaration["input"]
    image = resize(image.convert("RGB"), spec)

    if spec["color"] == "GRAY":
        # Rec. 709 luma, the weights of the `image` crate's `to_luma8`.
        # PIL's `convert("L")` uses Rec. 601 weights instead.
        rgb = np.asarray(image, dtype=np.float32)
        pixels = (rgb @ np.float32([0.2126, 0.7152, 0.0722]))[:, :, None]
    elif spec["color"] == "BGR":
        pixels = np.asarray(image, dtype=np.float32)[:, :, ::-1]
    else:
        pixels = np.asarray(image, dtype=np.float32)

    low, high = spec["range"]
    values = low + pixels / 255.0 * (high - low)
    values = (values - np.float32(spec["mean"])) / np.float32(spec["std"])
    values = values.astype(np.float32)

    if spec["layout"] == "NCHW":
        values = values.transpose(2, 0, 1)
    return values[None]


class DeclaredModel:
    """An ONNX Runtime session together with its declaration and labels."""

    def __init__(self, toml_path: Path) -> None:
        self.declaration = load_declaration(toml_path)
        self.labels = load_labels(self.declaration)
        self.session = ort.InferenceSession(
            str(self.declaration["onnx"]), providers=["CPUExecutionProvider"]
        )

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """Run the model on one image and return its class probabilities."""
        batch = to_tensor(image, self.declaration)
        (output,) = self.session.run(
            [self.declaration["output"]["name"]],
            {self.declaration["input"]["name"]: batch},
        )
        if self.declaration["output"]["kind"] == "probabilities":
            return output[0]
        return softmax(output[0])

    def top_k(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        probabilities = self.probabilities(image)
        order = np.argsort(-probabilities)[:k]
        return [(self.labels[i], float(probabilities[i])) for i in order]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
