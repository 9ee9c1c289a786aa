"""Attribution methods, Captum-style: ``Method(model, **options).attribute(inputs, target=None)``.

Every method returns a tensor of the inputs' shape, dtype and device, works on the whole batch,
and takes ``target`` as an int, a list of B ints, a (B,) integer tensor, or None for the
predicted class. The model is used as given (train/eval mode untouched, as in Captum). See
:mod:`sdecor.saliency._base` for the shared conventions.

``METHODS`` maps the names used by ``sdecor explain --method`` to the classes.
"""

from ._base import Attribution, input_gradient, resolve_target
from .dance import DANCE, Decoys
from .gradient import Gradient, InputXGradient
from .guided_backprop import GuidedBackprop
from .integrated_gradients import IG_METHODS, IntegratedGradients
from .rectgrad import NoBiasRectGrad, RectGrad
from .smoothgrad import NT_TYPES, SmoothGrad

METHODS = {
    "gradient": Gradient,
    "input_x_gradient": InputXGradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
    "guided_backprop": GuidedBackprop,
    "rectgrad": RectGrad,
    "nobias_rectgrad": NoBiasRectGrad,
    "dance": DANCE,
}

__all__ = [
    "Attribution",
    "Gradient",
    "InputXGradient",
    "SmoothGrad",
    "IntegratedGradients",
    "GuidedBackprop",
    "RectGrad",
    "NoBiasRectGrad",
    "DANCE",
    "Decoys",
    "METHODS",
    "NT_TYPES",
    "IG_METHODS",
    "input_gradient",
    "resolve_target",
]
