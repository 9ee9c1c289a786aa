"""The tiny networks the tests share (one place; each test file imports what it needs).

Every builder constructs its layers in a fixed order, so under a given seed it gives the same
weights wherever it is used. The ``*_cnn`` functions seed torch themselves (seed 0).

* :class:`PooledCNN`: conv-BN-ReLU, pooled features named by ``feature_layer`` ("pool") and a
  ``conv_feature_layer`` ("relu"), linear head: the objectives' model (channels 2, classes 3).
* :class:`PooledCNNWithoutFeatureLayer`: the same without ``feature_layer`` (features = the
  classifier's input).
* :class:`MeanPoolCNN`: conv(3->4) [+BN], ReLU, spatial mean, linear: the metrics' model.
* :class:`StridedCNN`: two convs (the second with stride 2) and a linear head on 12 x 12 inputs:
  the model of the Quantus comparisons.
* :func:`flat_cnn`: conv-[BN]-ReLU-conv-ReLU-flatten-[dropout]-linear on 3 x 6 x 6 inputs: the
  saliency methods' model.
* :func:`pooled_float64_cnn`: conv-BN-ReLU-maxpool-conv-ReLU-linear in float64, eval mode, on
  3 x 8 x 8 inputs: the Captum comparisons' model.
* :func:`two_conv_cnn`: conv-ReLU-conv-ReLU-linear on 2 x 7 x 7 inputs, eval mode: DANCE's model.
"""

import torch
from torch import nn


class PooledCNN(nn.Module):
    """conv-BN-ReLU, pooled features (named by ``feature_layer``), linear head."""

    feature_layer = "pool"
    conv_feature_layer = "relu"

    def __init__(self, channels=2, classes=3, width=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    def features(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))

    def forward(self, x):
        return self.fc(self.features(x))


class PooledCNNWithoutFeatureLayer(PooledCNN):
    """The same network without the ``feature_layer`` attribute: features = the classifier's input."""

    feature_layer = None


class MeanPoolCNN(torch.nn.Module):
    """conv(3 -> 4), optional BatchNorm, ReLU, mean over space, linear head."""

    def __init__(self, classes=4, bn=False):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4) if bn else torch.nn.Identity()
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.c1(x))).mean(dim=(2, 3)))


class StridedCNN(torch.nn.Module):
    """conv(3 -> 6), conv(6 -> 8, stride 2), linear head on the flattened 8 x 6 x 6 map (12 x 12 inputs)."""

    def __init__(self, classes=5):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = torch.nn.Linear(8 * 6 * 6, classes)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.flatten(1))


def flat_cnn(bn=False, dropout=0.0, classes=4):
    """conv-[BN]-ReLU(inplace)-conv-ReLU-flatten-[dropout]-linear for 3 x 6 x 6 inputs (seed 0)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(4 * 6 * 6, classes))
    return nn.Sequential(*layers)


def pooled_float64_cnn():
    """conv-BN-ReLU-maxpool-conv-ReLU-linear, float64, eval mode, for 3 x 8 x 8 inputs (seed 0)."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(5, 6, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 5),
        )
        .double()
        .eval()
    )


def two_conv_cnn():
    """conv-ReLU-conv-ReLU-flatten-linear for 2 x 7 x 7 inputs, eval mode (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 7 * 7, 3),
    ).eval()


class Recorder(nn.Module):
    """Wraps a model and records every call: ``calls`` holds (detached copies of) the input
    batches, ``modes`` whether the wrapper was in train mode for each."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []
        self.modes = []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        self.modes.append(self.training)
        return self.inner(x)
