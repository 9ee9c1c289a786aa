"""Attribution methods, Captum-style: ``Method(model, **options).attribute(inputs, target=None)``.

Every method returns a tensor of the inputs' shape, dtype and device, works on the whole batch,
and takes ``target`` as an int, a list of B ints, a (B,) integer tensor, or None for the
predicted class. The model is used as given (train/eval mode untouched, as in Captum). See
:mod:`sdecor.saliency._base` for the shared conventions.

``ATTRIBUTION_METHODS`` maps the names used by ``sdecor explain --method`` to the classes
(``METHODS`` is the same dict, under its former name).
"""

from ._base import Attribution, input_gradient
from .dance import DANCE, Decoys
from .gradient import Gradient, InputXGradient
from .guided_backprop import GuidedBackprop
from .integrated_gradients import IG_METHODS, IntegratedGradients
from .rectgrad import NoBiasRectGrad, RectGrad
from .registry import BASE_METHODS
from .smoothgrad import NT_TYPES, SmoothGrad
from .targets import resolve_target

#: name -> attribution class, for every method (the names ``sdecor explain --method`` takes)
ATTRIBUTION_METHODS = {**BASE_METHODS, "dance": DANCE}
#: former name of :data:`ATTRIBUTION_METHODS`
METHODS = ATTRIBUTION_METHODS

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
    "ATTRIBUTION_METHODS",
    "BASE_METHODS",
    "METHODS",
    "NT_TYPES",
    "IG_METHODS",
    "input_gradient",
    "resolve_target",
]
