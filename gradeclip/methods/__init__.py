"""Explanation methods, looked up by name in ``registry.METHODS``. The modules that register methods are imported
here, so that any import from this package (``registry`` included) finds them all; a new one is one line below
(``tests/test_adapters.py`` names a registering module missing here)."""
from . import baselines  # noqa: F401
