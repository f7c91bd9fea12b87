"""Generated data sets: MNIST-1D (offline, by the mnist1d package) and a learnable synthetic set for tests."""

from __future__ import annotations

import numpy as np
import torch

from gstlab.data.download import DataMissingError

SYNTHETIC_SEED = 20200601  # fixed: synthetic data does not depend on the run seed


def mnist1d() -> tuple[torch.Tensor, ...]:
    """The standard MNIST-1D (4000 train / 1000 test, length 40), generated with the package's default args."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DataMissingError("mnist1d needs the mnist1d package: pip install 'gstlab[mnist1d]'") from err
    state = np.random.get_state()  # make_dataset seeds numpy's global RNG; leave it as we found it
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    as_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"])


def synthetic(shape: tuple[int, ...], classes: int, n_train: int, n_test: int) -> tuple[torch.Tensor, ...]:
    """Class-dependent means plus unit Gaussian noise: learnable, deterministic, any shape. The test set has its
    own stream, so it does not change with ``n_train``."""
    train = torch.Generator().manual_seed(SYNTHETIC_SEED)
    means = torch.randn(classes, *shape, generator=train) * 0.5
    out = []
    for n, g in ((n_train, train), (n_test, torch.Generator().manual_seed(SYNTHETIC_SEED + 1))):
        y = torch.randint(0, classes, (n,), generator=g)
        out += [means[y] + torch.randn(n, *shape, generator=g), y]
    return tuple(out)
