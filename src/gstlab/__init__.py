"""gstlab: train while pruning on a schedule and measure the generalization-stability tradeoff."""

import sys

from gstlab import portable as _portable

__version__ = "0.1.0"

if _portable.requested() and "torch" not in sys.modules:  # GSTLAB_PORTABLE=1: pinned before gstlab imports torch
    _portable.pin()
