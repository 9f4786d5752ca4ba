"""tracemark.io.imaging helpers."""

import numpy as np


def test_cover_crop_resizes_to_cover_then_takes_the_centre():
    """What the trainers do to a sample (and what the audit must read the same way)."""
    from PIL import Image

    from tracemark.io.imaging import cover_crop

    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 30:50] = 255  # a bright band in the middle of a wide image
    out = cover_crop(Image.fromarray(arr), 20, 20)
    assert out.size == (20, 20)
    a = np.asarray(out)
    assert a[:, 8:12].min() > 200 and a[:, :2].max() < 30 and a[:, -2:].max() < 30  # centre kept, sides cut
    expected = Image.fromarray(arr).resize((40, 20), Image.Resampling.BICUBIC).crop((10, 0, 30, 20))
    assert np.array_equal(a, np.asarray(expected))  # not a squash: the band keeps its width
    same = Image.fromarray(arr[:20, :20])
    assert cover_crop(same, 20, 20) is same
    assert cover_crop(Image.fromarray(arr), 10, 30).size == (10, 30)  # any target shape
