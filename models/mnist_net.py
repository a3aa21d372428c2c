"""The MNIST digit classifier that `train_mnist.py` trains and exports.

Import `MnistNet` to rebuild the PyTorch model from `mnist-cnn.pt`:

    net = MnistNet()
    net.load_state_dict(torch.load("models/mnist-cnn.pt"))

The network expects digits normalized as `mnist-cnn.toml` declares:
pixel / 255, then (value - MEAN) / STD.
"""

import torch
from torch import nn

# Mean and standard deviation of the training split's pixels, after scaling
# them to [0, 1]. `train_mnist.py` measures them and checks they still agree
# to four decimals, so the trained weights and the declaration use the same
# constants.
MEAN = 0.1316
STD = 0.3088


class MnistNet(nn.Module):
    """A small CNN: two convolution blocks, then two fully connected layers.

    Input [N, 1, 28, 28], output [N, 10] logits. The max-pooling windows
    (kernel 3, stride 2) overlap, so one input pixel can feed two pooling
    windows, and its gradient is the sum over both.
    Spatial sizes: 28 -> conv 28 -> pool 13 -> conv 13 -> pool 6.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 6 * 6, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
