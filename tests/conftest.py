"""Hypothesis profiles for the property-based tests (``tests/test_properties.py``), and a fresh
Inductor cache for the compiled steps.

``default`` (``make test``) runs a bounded number of examples, a few seconds per property;
``--hypothesis-profile=long`` runs thousands, for a search before a release.

The compiled tests use a cache directory of their own (unless ``TORCHINDUCTOR_CACHE_DIR`` is
set): a test must not depend on what ran on the machine before. (The machine's shared cache
once served a per-tensor ``fused=True`` kernel compiled with another momentum; that was a
float written into the kernel without a guard, fixed in ``amosopt.torch._fused``, and
``test_fused.py`` checks it in one process.)
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="amosopt-inductor-"))

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves without hypothesis
    settings = None

if settings is not None:
    # the examples build optimizers and run a few steps: slower than hypothesis assumes
    _slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("default", max_examples=25, deadline=None,
                              suppress_health_check=_slow)
    settings.register_profile("long", max_examples=3000, deadline=None,
                              suppress_health_check=_slow)
    settings.load_profile("default")  # --hypothesis-profile=... loads another one after this

