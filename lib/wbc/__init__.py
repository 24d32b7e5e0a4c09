"""wbc: white-blood-cell image classification, the library behind the course notebooks.

Stages (one module each): readers -> merge -> preprocess -> split -> pipeline -> models
-> train -> evaluate / gradcam. ``python -m wbc --help`` runs the same stages from a shell.
"""

import os as _os

# Tame TensorFlow's C++ log noise (INFO and WARNING lines) unless the user chose a level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
