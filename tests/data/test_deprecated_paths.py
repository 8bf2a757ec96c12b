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


def test_moved_engine_helpers_keep_their_old_names_for_a_release(tmp_path):
    import nonlocalnet.models as models
    import nonlocalnet.viz as viz
    from nonlocalnet import engine

    with pytest.warns(DeprecationWarning, match="use nonlocalnet.engine.choose_memory_format"):
        assert models.choose_memory_format is engine.choose_memory_format
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n')
    with pytest.warns(DeprecationWarning, match="use nonlocalnet.engine.read_jsonl"):
        assert viz.read_jsonl(log) == engine.read_jsonl(log) == [{"step": 1}]


def test_importing_the_engine_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, nonlocalnet.engine, nonlocalnet.data, nonlocalnet.models\n"
    code += "print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
