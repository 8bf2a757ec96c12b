import importlib
import sys

import pytest


def test_the_old_datasets_module_still_works_and_warns():
    sys.modules.pop("nonlocalnet.data.datasets", None)
    with pytest.warns(DeprecationWarning, match="import from nonlocalnet.data"):
        old = importlib.import_module("nonlocalnet.data.datasets")
    import nonlocalnet.data as data
    from nonlocalnet.data import lists

    for name in old.__all__:
        home = data if hasattr(data, name) else lists
        assert getattr(old, name) is getattr(home, name), name
