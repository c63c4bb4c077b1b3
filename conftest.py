"""Repository-wide pytest setup: keep Hugging Face's `kernels` package visible during collection.

transformers >= 5.25 requires the PyPI package `kernels` and imports it with itself. pytest's
importlib mode names our files under kernels/tests/ `kernels.tests.test_*` (by their path) and, if
no `kernels` module is imported yet, makes one from the folder kernels/: a namespace package that
hides the real one, so `import transformers` then fails ("cannot import name 'CUDAProperties'
from 'kernels'"). With the real package imported first, pytest hangs `kernels.tests` under it.
"""

import importlib
import importlib.util

_spec = importlib.util.find_spec("kernels")
if _spec is not None and _spec.origin is not None:  # an installed package, not our folder
    importlib.import_module("kernels")
