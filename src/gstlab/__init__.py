"""gstlab: train while pruning on a schedule and measure the generalization-stability tradeoff."""

__version__ = "0.1.0"
