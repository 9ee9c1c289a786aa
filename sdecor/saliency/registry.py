"""Names of the attribution methods that work on the model alone (every method but DANCE).

:data:`BASE_METHODS` maps a name to its class; DANCE wraps one of them (its ``base_method``), and
:data:`sdecor.saliency.ATTRIBUTION_METHODS` adds DANCE itself to these names.
"""

from .gradient import Gradient, InputXGradient
from .guided_backprop import GuidedBackprop
from .integrated_gradients import IntegratedGradients
from .rectgrad import NoBiasRectGrad, RectGrad
from .smoothgrad import SmoothGrad

__all__ = ["BASE_METHODS"]

#: name -> attribution class, for every method that DANCE can wrap
BASE_METHODS = {
    "gradient": Gradient,
    "input_x_gradient": InputXGradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
    "guided_backprop": GuidedBackprop,
    "rectgrad": RectGrad,
    "nobias_rectgrad": NoBiasRectGrad,
}
