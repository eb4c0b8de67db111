"""imagio.io internals: label values of a label map."""

import numpy as np


def test_label_values_in_chunks_equal_numpy_unique(monkeypatch):
    """The label values are counted in chunks (bincount would cast a whole mask to int64): the same values as
    numpy's unique, across chunk borders, with a negative lowest label and an empty chunk of zeros."""
    from imagio import io as imagio_io

    monkeypatch.setattr(imagio_io, "_BINCOUNT_CHUNK", 1000)
    rng = np.random.default_rng(3)
    arr = np.zeros((7, 33, 41), np.int16)
    arr.reshape(-1)[2500:] = rng.choice([-3, 0, 5, 255, 1024], size=arr.size - 2500)
    assert np.array_equal(imagio_io._label_values(arr), np.unique(arr))
    assert np.array_equal(imagio_io._label_values(arr.astype(np.uint16) * 0 + 7), [7])
