"""Figures: training curves, confusion matrices, attention maps (matplotlib, PNG)."""

from nonlocalnet.viz.confusion import plot_confusion, write_confusion_csv
from nonlocalnet.viz.curves import plot_training_curves, read_jsonl

__all__ = ["plot_confusion", "plot_training_curves", "read_jsonl", "write_confusion_csv"]
