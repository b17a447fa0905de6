"""Image corruptions at five severities: MedMNIST-C for grey-scale medical images.

Clinical robustness is as much about noise, blur, contrast and compression as about
attacks. MedMNIST-C (Di Salvo, Doerrich & Ledig 2024, arXiv 2406.17536; code
github.com/francescodisalvo05/medmnistc-api) defines, per MedMNIST dataset, a set of
realistic corruptions at five severities. Its package pulls PyTorch, torchvision, OpenCV
and ImageMagick, so arjax re-implements the corruptions of its grey-scale sets as batched
JAX functions (JPEG through PIL on the host), following its definitions and severity
tables, and adds an MRI bias field (TorchIO's definition) that MedMNIST-C lacks::

    from arjax.data.corruptions import corrupt, corruption_names
    for name in corruption_names("chestmnist"):
        for severity in range(1, 6):
            x_c = corrupt(name, x, severity, key, preset="chestmnist")

Modules: ``registry`` (``corrupt``, the registry, presets), ``noise`` (Gaussian, speckle,
impulse, shot), ``blur`` (Gaussian, defocus, motion), ``intensity`` (brightness,
contrast, gamma, bias field), ``digital`` (pixelate, JPEG). A new corruption is one
function plus one ``register_corruption`` call with its severity table.

They live in ``arjax.data`` because they are image transforms with two users: the
corruption evaluator (``arjax.evaluation`` may import ``arjax.data``) and, MedMNIST-C's
second use, training-time augmentation in the data pipeline (``arjax.data`` may not
import ``arjax.evaluation``).
"""

from arjax.data.corruptions import blur, digital, intensity, noise
from arjax.data.corruptions.registry import (
    ANY_PRESET,
    CORRUPTIONS,
    DEFAULT_PRESET,
    PRESET_ALIASES,
    PRESETS,
    SEVERITIES,
    CorruptionDef,
    corrupt,
    corruption_names,
    register_corruption,
    resolve_preset,
    severity_parameter,
)

__all__ = [
    "ANY_PRESET",
    "CORRUPTIONS",
    "DEFAULT_PRESET",
    "PRESETS",
    "PRESET_ALIASES",
    "SEVERITIES",
    "CorruptionDef",
    "blur",
    "corrupt",
    "corruption_names",
    "digital",
    "intensity",
    "noise",
    "register_corruption",
    "resolve_preset",
    "severity_parameter",
]
