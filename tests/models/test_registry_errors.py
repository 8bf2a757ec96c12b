"""``build_model``'s refusals of wrong override types, naming the field (``models.registry``)."""

import pytest

from nonlocalnet.errors import InvalidTypeError
from nonlocalnet.models import build_model


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"stem_width": "abc"}, "override stem_width must be an int, got str 'abc'"),
        ({"stem_width": 8.0}, "override stem_width must be an int"),
        ({"stride_on_1x1": 1}, "override stride_on_1x1 must be a bool"),
        ({"stages": [1]}, "override stages must be a sequence of StageSpec"),
    ],
)
def test_wrong_override_types_name_the_field(overrides, match):
    """``build_model("c2d_r50", stem_width="abc")`` said "bad nonlocal_options None: not all
    arguments converted during string formatting"."""
    with pytest.raises(InvalidTypeError, match=match):
        build_model("c2d_r50", **overrides)


def test_nonlocal_options_must_be_a_mapping():
    with pytest.raises(
        InvalidTypeError,
        match="nonlocal_options must be a NonLocalOptions or a mapping of its fields, got int",
    ):
        build_model("c2d_nl1_r50", nonlocal_options=3)
