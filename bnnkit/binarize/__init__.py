"""Pure binarization math: sign, surrogate gradients, autograd Functions, binarizers, scales.

Naming follows larq: ``*_grad`` are surrogate derivatives (pure functions), the bare names
(``approx_sign``...) are differentiable functions, CamelCase names are modules.
"""

from bnnkit.binarize.autograd import (
    approx_sign,
    clipped_ste_sign,
    ede_sign,
    identity_ste_sign,
    magnitude_aware_sign,
    shifted_approx_sign,
    swish_sign,
)
from bnnkit.binarize.binarizers import (
    ApproxSign,
    Binarizer,
    ClippedSTESign,
    EDESign,
    IdentitySTESign,
    MagnitudeAwareSign,
    PeriodicSign,
    PlainSign,
    SineWeight,
    StdNormApproxSign,
    SwishSign,
    get_binarizer,
    list_binarizers,
    register_binarizer,
)
from bnnkit.binarize.functional import (
    approx_sign_grad,
    channel_mean_abs,
    clipped_ste_grad,
    ede_grad,
    identity_ste_grad,
    sign,
    square_wave,
    standardize,
    swish_sign_grad,
)
from bnnkit.binarize.scales import LearnableScale, MeanAbsScale, Scale, get_scale, list_scales

__all__ = [
    "ApproxSign",
    "Binarizer",
    "ClippedSTESign",
    "EDESign",
    "IdentitySTESign",
    "LearnableScale",
    "MagnitudeAwareSign",
    "MeanAbsScale",
    "PeriodicSign",
    "PlainSign",
    "Scale",
    "SineWeight",
    "StdNormApproxSign",
    "SwishSign",
    "approx_sign",
    "approx_sign_grad",
    "channel_mean_abs",
    "clipped_ste_grad",
    "clipped_ste_sign",
    "ede_grad",
    "ede_sign",
    "get_binarizer",
    "get_scale",
    "identity_ste_grad",
    "identity_ste_sign",
    "list_binarizers",
    "list_scales",
    "magnitude_aware_sign",
    "register_binarizer",
    "shifted_approx_sign",
    "sign",
    "square_wave",
    "standardize",
    "swish_sign",
    "swish_sign_grad",
]
