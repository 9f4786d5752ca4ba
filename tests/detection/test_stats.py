import numpy as np

from tracemark.detection import stats
from tracemark.marking.schemes import get_scheme
from tracemark.registry.keys import random_key


def test_holm_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    adj = stats.holm(p)
    # sorted: .01*4=.04, .03*3=.09, .04*2=.08->max .09, .5*1=.5
    assert np.allclose(adj, [0.04, 0.09, 0.09, 0.5])
    # a family of 6 of which these 4 were selected: the same as testing 2 more with p = 1
    assert np.allclose(stats.holm(p, family=6), stats.holm(np.r_[p, 1.0, 1.0])[:4])
    assert np.allclose(stats.holm(p, family=2), adj)  # never smaller than the tested set


def test_statistic_is_standard_normal_for_unused_keys(natural_images):
    sch = get_scheme("spread")
    F = sch.features(natural_images[:16])
    m = stats.aggregate(F, "correlation")
    z = stats.key_statistic(m, sch.random_vectors(4000, np.random.default_rng(0)), "correlation")
    assert abs(z.mean()) < 0.06 and abs(z.std() - 1) < 0.05


def test_false_positive_rate_is_calibrated_over_500_null_trials(natural_images):
    """alpha = 0.01 must give <= 2% false positives on unmarked images with fresh keys."""
    sch = get_scheme("spread")
    F_all = sch.features(natural_images)
    rng = np.random.default_rng(123)
    decoys = sch.random_vectors(1000, rng)
    fp, trials = 0, 500
    for t in range(trials):
        idx = rng.choice(len(F_all), size=20, replace=False)
        P = sch.random_vectors(1, rng)
        res = stats.test_keys(F_all[idx], P, decoys, "correlation")
        fp += res.p_value[0] < 0.01
    lo, hi = stats.binomial_ci(fp, trials)
    assert fp / trials <= 0.02, (fp, lo, hi)


def test_marked_images_give_tiny_p_and_message_stats(natural_images):
    sch = get_scheme("spread")
    k = random_key()
    marked = [sch.embed(im, k) for im in natural_images[:20]]
    res = stats.test_keys(sch.features(marked), sch.key_vectors([k]), sch.random_vectors(1000, np.random.default_rng(1)),
                          "correlation")
    assert res.p_value[0] < 1e-6
    assert res.p_empirical[0] == 1 / 1001
    # message kind: perfect agreement over 64 bits has p = 2^-64
    bits = np.sign(np.random.default_rng(2).normal(size=(1, 64)))
    res = stats.test_keys(bits * 0.5, bits, np.sign(np.random.default_rng(3).normal(size=(500, 64))), "message")
    assert res.stat[0] == 64 and res.p_value[0] < 1e-18


def test_binomial_ci_contains_rate():
    lo, hi = stats.binomial_ci(5, 500)
    assert lo < 0.01 < hi


def test_content_projection_removes_a_key_aligned_with_the_domain_and_keeps_the_null():
    """A key that happens to align with the content every image of a domain shares is accused by
    any innocent set of such images; testing outside the content subspace removes that bias while
    the statistic stays N(0, 1) over random keys (measured case: docs/research/learnability_log.md)."""
    from tracemark.detection.stats import content_basis, test_keys

    rng = np.random.default_rng(0)
    D = 300
    shared = rng.normal(size=D)  # what every image of the domain has in common
    def domain(n):
        return 3.0 * shared[None, :] + rng.normal(size=(n, D))
    unlucky = np.sign(shared + 2.5 * rng.normal(size=D))[None, :]  # aligned with the domain by chance
    decoys = rng.integers(0, 2, size=(2000, D)) * 2.0 - 1
    innocent = domain(64)  # images of the domain that carry no mark
    raw = test_keys(innocent, unlucky, decoys, "correlation")
    assert raw.stat[0] > 5  # accused without the projection
    B = content_basis(domain(500))
    proj = test_keys(innocent, unlucky, decoys, "correlation", basis=B)
    assert abs(proj.stat[0]) < 3 and 0.9 < proj.null.std < 1.1 and abs(proj.null.mean) < 0.1
    marked = innocent + 0.6 * decoys[7][None, :]  # a real mark is still found after projection
    assert test_keys(marked, decoys[7:8], decoys[:5], "correlation", basis=B).stat[0] > 5
