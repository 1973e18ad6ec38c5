"""Tests that need an optional extra skip, naming it, where the extra is not installed.

`pip install paged_flex` leaves out the `assets` extra (gguf, datasets, mwparserfromhell) and the `bench`
extra (matplotlib); `make test-cpu` runs the suite that way.
"""

import pytest

EXTRAS = {"gguf": "assets", "datasets": "assets", "mwparserfromhell": "assets", "matplotlib": "bench"}


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    outcome = yield
    err = outcome.excinfo[1] if outcome.excinfo else None
    if isinstance(err, ModuleNotFoundError) and err.name in EXTRAS:
        outcome.force_exception(
            pytest.skip.Exception(
                f"needs {err.name}: pip install paged_flex[{EXTRAS[err.name]}]", _use_item_location=True
            )
        )
