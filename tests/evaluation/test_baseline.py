import numpy as np

from tracemark.evaluation.baseline import DiagnosisDetector
from tracemark.io.dataset import load_samples, read_image_rgb
from tracemark.marking.schemes import get_scheme
from tracemark.registry.keys import Key


def test_diagnosis_classifier_separates_coated_from_clean(tmp_path):
    from tracemark_sim import make_dataset

    data = make_dataset(tmp_path / "faces", 600, "faces", seed=2)
    clean = [read_image_rgb(s.path) for s in load_samples(data)]
    warp = get_scheme("warp", strength=16.0)
    key = Key(bytes(32))
    coated = [np.clip(np.rint(warp.embed(im, key)), 0, 255) for im in clean]
    det = DiagnosisDetector(seed=0)
    det.fit(clean[:250], coated[250:500], epochs=15)
    f_coated = det.flag(coated[500:])
    f_clean = det.flag(clean[500:])
    assert f_coated.fraction_coated > f_clean.fraction_coated + 0.3, (f_coated, f_clean)
    assert f_coated.n_images == 100 and f_coated.threshold == 0.75
