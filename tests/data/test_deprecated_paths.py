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


def test_the_old_synthetic_module_forwards_to_the_demo_with_a_warning():
    from nonlocalnet.data import synthetic as old
    from nonlocalnet.demo import synthetic

    with pytest.warns(DeprecationWarning, match="use nonlocalnet.demo.synthetic"):
        assert old.additive_ceiling is synthetic.additive_ceiling
