"""Figures: training curves, confusion matrices, attention maps (matplotlib, PNG)."""

from nonlocalnet.viz.attention import (
    attention_map,
    draw_attention,
    key_argmax_pixel,
    nonlocal_inputs,
    plot_attention,
    query_to_grid,
)
from nonlocalnet.viz.confusion import draw_confusion, plot_confusion, write_confusion_csv
from nonlocalnet.viz.curves import draw_training_curves, plot_training_curves

__all__ = [
    "attention_map",
    "draw_attention",
    "draw_confusion",
    "draw_training_curves",
    "key_argmax_pixel",
    "nonlocal_inputs",
    "plot_attention",
    "plot_confusion",
    "plot_training_curves",
    "query_to_grid",
    "write_confusion_csv",
]
