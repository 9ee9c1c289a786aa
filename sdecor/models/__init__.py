"""Small reference models. Any ``nn.Module`` classifier works with sdecor given a layer name.

Public API (stable)
-------------------

``SmallCNN(num_classes=10, in_channels=3, width=32)``
    Four conv3x3-BN-ReLU blocks (widths w/2, w, 2w, 2w; 2x2 max-pool after the first two),
    global average pooling and a linear head. ~60k parameters at width 32; about 5 MFLOP-MACs
    per 32 x 32 image, fast enough to train on a laptop CPU in seconds per epoch.

``ResNet20`` / ``resnet20(num_classes=10, in_channels=3, width=16)``
    The CIFAR ResNet-20 of He et al. (3 stages x 3 basic blocks, widths 16/32/64, 1x1-conv
    projection shortcuts; ~0.27M parameters).

Both models (and anything built by ``build_model``) expose:
  * ``feature_layer`` (str): name (in ``model.named_modules()``) of the module whose output is
    the penultimate pooled feature vector (N, D) - ``"pool"``, an ``AdaptiveAvgPool2d(1)`` +
    ``Flatten``. The decorrelation penalty is applied there by default.
  * ``conv_feature_layer`` (str): name of the module whose output is the last convolutional
    feature map (N, C, h, w) (``"block4"`` for SmallCNN, ``"layer3"`` for ResNet20).
  * ``config`` (dict): ``{"name": ..., "kwargs": {...}}``, enough for
    ``build_model(**config)``-style rebuilding; ``sdecor.train.save_checkpoint`` stores it.
Every non-linearity is a separate, non-inplace ``nn.ReLU`` module (used exactly once per
forward), so backward hooks (RectGrad, Guided Backprop) can rewrite its gradient and double
backward (input-gradient penalties) works. Models take [0, 1] images directly (no input
normalisation; the first conv is followed by BatchNorm).

Model introspection (:mod:`sdecor.models.introspection`, for any ``nn.Module``):

``get_layer(model, name) -> nn.Module``: the sub-module called ``name`` (wrappers and a DDP
wrapper's ``module.`` prefix are handled), with a ``ValueError`` listing close names if missing.
``unwrap_model(model)``: the module inside DDP / DataParallel / torch.compile wrappers.
``resolve_feature_layer(model, layer=None) -> (module, record_input, name)``: the penultimate
features (``model.feature_layer``, else the classifier's input), ``"conv"``
(``model.conv_feature_layer``) or a named layer.
``record_features(model, layer=None)``: ``with record_features(model) as record: model(x)``
leaves the layer's features in ``record.features``; the hook exists only inside the block.

``build_model(name, num_classes=10, in_channels=3, **kwargs) -> nn.Module`` with ``name`` in
``MODEL_NAMES`` (``"small_cnn"``, ``"resnet20"``; ``"smallcnn"`` and ``"small-cnn"`` are
aliases).
"""

from .introspection import FeatureRecord, get_layer, record_features, resolve_feature_layer, unwrap_model
from .iternorm import IterNorm, replace_last_batchnorm
from .small import MODEL_NAMES, ResNet20, SmallCNN, build_model, resnet20

__all__ = [
    "MODEL_NAMES",
    "FeatureRecord",
    "IterNorm",
    "ResNet20",
    "SmallCNN",
    "build_model",
    "get_layer",
    "record_features",
    "replace_last_batchnorm",
    "resnet20",
    "resolve_feature_layer",
    "unwrap_model",
]
