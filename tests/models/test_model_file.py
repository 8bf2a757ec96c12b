"""Reading weights and checkpoint files (``nonlocalnet.models.model_file``, ``engine.checkpoint``):
a file that is not one is a one-line error."""

import pytest
import torch

from nonlocalnet.engine.checkpoint import load_checkpoint
from nonlocalnet.errors import InvalidValueError
from nonlocalnet.models import read_model_file


def test_unreadable_weight_files_are_one_line_errors(tmp_path):
    """A YAML file given as a checkpoint printed torch's many-line weights_only message (which
    advises weights_only=False), a truncated checkpoint "[Errno 22] Invalid argument", an empty
    one nothing after the colon, and a damaged .safetensors file a SafetensorError traceback."""
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    files = {
        "config.yaml": (b"checkpoint:\n  keep_last: 10\n", "not a complete file written by torch.save"),
        "cut.pt": (
            good.read_bytes()[: good.stat().st_size // 2],
            "not a complete file written by torch.save",
        ),
        "empty.pt": (b"", "the file ends early"),
        "junk.safetensors": (b"checkpoint:\n  keep_last: 10\n", "is not a readable safetensors file"),
    }
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    for name, (_, match) in {**files, "whole.pt": (None, "Python objects besides tensors")}.items():
        path = tmp_path / name
        loaders = [read_model_file] if name.endswith(".safetensors") else [read_model_file, load_checkpoint]
        for load in loaders:
            with pytest.raises(InvalidValueError, match=match) as info:
                load(path)
            assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
