"""Loading a run's samples (``nonlocalnet.tasks.video.setup``)."""

import pytest
from tiny_video import tiny_config

from nonlocalnet.engine import ConfigError
from nonlocalnet.tasks import config_from_dict
from nonlocalnet.tasks.video import load_samples


def test_a_missing_class_names_file_names_the_key(tiny_data, tmp_path):
    """``eval`` from another folder than training's, with a relative ``data.class_names`` in the
    saved config, printed only "[Errno 2] No such file or directory: 'data/classes.txt'"."""
    cfg = config_from_dict(tiny_config(tiny_data, tmp_path, data={"class_names": str(tmp_path / "nope.txt")}))
    with pytest.raises(ConfigError, match="data.class_names: no such file: .*nope.txt"):
        load_samples(cfg.data, "val", class_names=["red", "blue"])
