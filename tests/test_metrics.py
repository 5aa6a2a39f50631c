"""The metrics on synthetic codes whose answers are known, and on a small dataset folder.

Known answers: codes that copy the factors one each (disentangled), codes that mix every factor
into every dimension with equal weight (a scaled Hadamard rotation: entangled, yet informative),
and codes that ignore the factors. A permutation of the code dimensions must not move a score.
"""

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import hadamard

from kubevae.data.dataset import Dataset, write_dataset
from kubevae.metrics import (
    CachedRepresentation,
    GroundTruthData,
    MetricProtocol,
    active_units,
    anomaly_quality,
    compute_beta_vae,
    compute_factor_vae,
    dci,
    dci_details,
    dci_settings,
    gaussian_total_correlation,
    kl_per_dimension,
    mig,
    mig_details,
    mig_settings,
    mutual_info_score,
    plant_defects,
    sampled_total_correlation,
    sap,
)

SIZES = (2, 3, 4, 5)
MIX = hadamard(4) / 2.0  # orthogonal, every entry +-1/2: each code holds every factor equally
PERMUTATION = np.array([2, 0, 3, 1])


def standardized(factors):
    sizes = np.array(SIZES)
    return (factors - (sizes - 1) / 2) / (sizes / np.sqrt(12))


def random_factors(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(s, size=n) for s in SIZES], axis=1)


def codes_for(kind, factors, seed):
    rng = np.random.default_rng(seed)
    noise = 0.01 * rng.standard_normal(factors.shape)
    if kind == "copy":
        return standardized(factors) + noise
    if kind == "mix":
        return standardized(factors) @ MIX + noise
    return rng.standard_normal(factors.shape)  # "ignore"


@pytest.fixture(scope="module")
def code_sets():
    f_train, f_test = random_factors(2000, 1), random_factors(600, 2)
    return {kind: (codes_for(kind, f_train, 3), f_train, codes_for(kind, f_test, 4), f_test)
            for kind in ("copy", "mix", "ignore")}


# -- MIG ---------------------------------------------------------------------------------------
def test_mig_known_answers(code_sets):
    scores = {kind: mig(c, f) for kind, (c, f, _, _) in code_sets.items()}
    assert scores["copy"] > 0.9
    assert scores["mix"] < 0.1
    assert scores["ignore"] < 0.05


def full_factorial(sizes=SIZES):
    return np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), axis=1)


def test_mig_of_an_exact_copy_is_one_and_details_explain_it():
    # On a full factorial the factors are exactly independent, so the runner-up code carries 0
    # nats; each factor has at most 5 values, which 20 bins keep apart: MI = entropy, MIG = 1.
    factors = full_factorial()
    details = mig_details(factors.astype(float), factors)
    assert details["mig"] == pytest.approx(1.0, abs=1e-9)
    mi = np.array(details["mutual_information"])
    assert np.allclose(np.diag(mi), details["factor_entropy"])
    assert details["skipped_factors"] == []


def test_mig_is_invariant_to_permuting_and_rescaling_codes(code_sets):
    for codes, factors, _, _ in code_sets.values():
        base = mig(codes, factors)
        assert mig(codes[:, PERMUTATION], factors) == pytest.approx(base, abs=1e-12)
        # Equal-width bins move with an affine map of a dimension, so this is exact too.
        assert mig(3.0 * codes - 1.0, factors) == pytest.approx(base, abs=1e-12)


def test_mig_skips_constant_factors_and_says_so():
    factors = full_factorial()
    factors[:, 1] = 0
    details = mig_details(factors.astype(float), factors)
    assert details["skipped_factors"] == [1]
    assert np.isnan(details["per_factor"][1])
    assert details["mig"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="every factor is constant"):
        mig(np.random.default_rng(0).normal(size=(10, 2)), np.zeros((10, 2), int))


def test_mig_settings_state_the_protocol():
    settings = mig_settings(num_points=10_000)
    assert settings["num_bins"] == 20 and settings["representation"] == "mean"
    assert settings["num_points"] == 10_000
    assert settings["protocol"] == "disentanglement_lib mig.gin (num_train=10000, num_bins=20)"
    # Other arguments: the protocol line names what differs, and never claims mig.gin's numbers.
    other = mig_settings(num_bins=10, num_points=500)
    assert (other["num_bins"], other["num_points"]) == (10, 500)
    assert other["protocol"] == ("disentanglement_lib mig.gin, except num_train=500 (theirs: 10000), "
                                 "num_bins=10 (theirs: 20)")
    assert mig_settings()["protocol"] == "disentanglement_lib mig.gin, except num_train not recorded (theirs: 10000)"


def test_every_metric_states_how_its_settings_differ_from_disentanglement_libs():
    from kubevae.metrics import beta_vae_settings, factor_vae_settings, sap_settings
    from kubevae.metrics.udr import udr_settings

    p = MetricProtocol()
    assert dci_settings(p.dci_importance, p.dci_num_train, p.dci_num_test)["protocol"] == (
        "disentanglement_lib dci.gin (num_train=10000, num_test=5000, importance_model=gradient_boosting)")
    assert dci_settings("random_forest", 400, 5_000)["protocol"] == (
        "disentanglement_lib dci.gin, except num_train=400 (theirs: 10000), "
        "importance_model=random_forest (theirs: gradient_boosting)")
    assert sap_settings(10_000, 5_000)["protocol"].endswith("(num_train=10000, num_test=5000)")
    assert "num_test=50 (theirs: 5000)" in sap_settings(10_000, 50)["protocol"]
    assert "except" not in factor_vae_settings()["protocol"]
    assert factor_vae_settings(num_train=2_000)["protocol"].endswith("except num_train=2000 (theirs: 10000)")
    assert "except" not in beta_vae_settings()["protocol"]
    assert beta_vae_settings(batch_size=16)["protocol"].endswith("except batch_size=16 (theirs: 64)")
    assert "except" not in udr_settings("lasso", 1_000)["protocol"]
    assert udr_settings("lasso", 300)["protocol"].endswith("except num_points=300 (theirs: 1000)")


@pytest.mark.parametrize("codes, factors, message", [
    (np.zeros((5,)), np.zeros((5, 2), int), "codes: expected a non-empty array of shape"),
    (np.zeros((5, 2)), np.zeros((4, 2), int), "factors: has 4 rows, but the codes have 5"),
    (np.full((5, 2), np.nan), np.zeros((5, 2), int), "codes: contains 10 non-finite"),
    (np.zeros((5, 2)), np.full((5, 2), 0.5), "factors: expected integer factor values"),
])
def test_bad_input_names_the_parameter(codes, factors, message):
    with pytest.raises(ValueError, match=message):
        mig(codes, factors)


# -- DCI and SAP -------------------------------------------------------------------------------
@pytest.mark.slow
def test_dci_known_answers_and_permutation(code_sets):
    small = {kind: (c[:400], f[:400], ct[:200], ft[:200]) for kind, (c, f, ct, ft) in code_sets.items()}
    copy = dci(*small["copy"])
    assert set(copy) == {"disentanglement", "completeness", "informativeness"}
    assert copy["disentanglement"] > 0.9 and copy["completeness"] > 0.9
    assert copy["informativeness"] > 0.95
    mix = dci(*small["mix"])
    assert mix["disentanglement"] < 0.2 and mix["completeness"] < 0.2
    assert mix["informativeness"] > 0.6  # mixing keeps the information, only entangles it
    ignore = dci(*small["ignore"])
    assert ignore["disentanglement"] < 0.2 and ignore["completeness"] < 0.2
    assert ignore["informativeness"] < 0.45  # chance is 0.32 averaged over these factor sizes
    c, f, ct, ft = small["copy"]
    permuted = dci(c[:, PERMUTATION], f, ct[:, PERMUTATION], ft)
    for key in copy:
        assert permuted[key] == pytest.approx(copy[key], abs=1e-6)


def test_dci_importance_matrix_points_each_factor_at_its_code(code_sets):
    c, f, ct, ft = (a[:400] for a in code_sets["copy"])
    details = dci_details(c, f, ct, ft, importance_model="random_forest")
    importance = np.array(details["importance_matrix"])
    assert importance.shape == (4, 4)
    assert (np.argmax(importance, axis=0) == np.arange(4)).all()
    assert dci_settings("random_forest")["deviation"]
    assert dci_settings()["deviation"] is None


def test_sap_known_answers_and_permutation(code_sets):
    scores = {kind: sap(*arrays) for kind, arrays in code_sets.items()}
    # A linear SVM on one code cannot cut a many-valued factor into all its intervals, so even
    # a perfect copy scores well below 1 (as in disentanglement_lib); it still dominates.
    assert scores["copy"] > 0.25
    assert scores["mix"] < 0.05 and scores["ignore"] < 0.05
    c, f, ct, ft = code_sets["copy"]
    assert sap(c[:, PERMUTATION], f, ct[:, PERMUTATION], ft) == pytest.approx(scores["copy"], abs=1e-12)
    binary = random_factors(1000, 5)[:, :1]  # factor 0 has two values: a threshold separates it
    assert sap(binary.astype(float) + np.zeros((1000, 2)), binary,
               binary.astype(float) + np.zeros((1000, 2)), binary) == pytest.approx(0.0)
    one_good = np.hstack([binary.astype(float), np.random.default_rng(0).normal(size=(1000, 1))])
    assert sap(one_good, binary, one_good, binary) > 0.4


# -- FactorVAE and beta-VAE metrics (they need the ground-truth oracle) ------------------------
@pytest.fixture(scope="module")
def factorial():
    """The full factorial of SIZES; each 'image' carries its factor values and its item id."""
    factors = full_factorial()
    n = len(factors)
    images = np.zeros((n, 1, 1, 6), np.uint8)
    images[:, 0, 0, :4] = factors
    images[:, 0, 0, 4], images[:, 0, 0, 5] = np.arange(n) // 256, np.arange(n) % 256
    table = np.random.default_rng(11).standard_normal((n, 4))
    representations = {
        "copy": lambda x: standardized(x[:, 0, 0, :4].astype(float)),
        "mix": lambda x: standardized(x[:, 0, 0, :4].astype(float)) @ MIX,
        "ignore": lambda x: table[x[:, 0, 0, 4].astype(int) * 256 + x[:, 0, 0, 5]],
    }
    return GroundTruthData(images, factors, factor_sizes=SIZES), representations


def test_factor_vae_and_beta_vae_known_answers_and_permutation(factorial):
    data, representations = factorial
    counts = {"num_train": 500, "num_eval": 300}
    scores = {}
    for kind, fn in representations.items():
        fvae = compute_factor_vae(data, fn, 0, num_variance_estimate=500, **counts)
        bvae = compute_beta_vae(data, fn, 0, **counts)
        scores[kind] = (fvae["eval_accuracy"], bvae["eval_accuracy"])
        permuted = lambda x, fn=fn: fn(x)[:, PERMUTATION]  # noqa: E731
        again = compute_factor_vae(data, permuted, 0, num_variance_estimate=500, **counts)
        assert np.array_equal(again.pop("eval_correct"), fvae["eval_correct"])
        assert again == {k: v for k, v in fvae.items() if k != "eval_correct"}
        assert compute_beta_vae(data, permuted, 0, **counts)["eval_accuracy"] == \
            pytest.approx(bvae["eval_accuracy"], abs=0.01)
    assert scores["copy"] == (1.0, 1.0)
    for kind in ("mix", "ignore"):
        assert scores[kind][0] < 0.5 and scores[kind][1] < 0.5, (kind, scores[kind])


def test_factor_vae_prunes_collapsed_dimensions(factorial):
    data, representations = factorial
    collapsed = lambda x: np.hstack([representations["copy"](x), np.zeros((len(x), 2))])  # noqa: E731
    result = compute_factor_vae(data, collapsed, 0, num_train=200, num_eval=100, num_variance_estimate=200)
    assert result["num_active_dims"] == 4 and result["eval_accuracy"] == 1.0
    nothing = compute_factor_vae(data, lambda x: np.zeros((len(x), 3)), 0, num_train=10, num_eval=10,
                                 num_variance_estimate=50)
    assert not nothing.pop("eval_correct").any()
    assert nothing == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_oracle_draws_share_the_fixed_factor_and_cache_encodes_each_item_once(factorial):
    data, representations = factorial
    rng = np.random.default_rng(0)
    chosen = rng.integers(4, size=300)
    batches = data.sample_fixed_factor_batches(chosen, 16, rng)
    for k, batch in zip(chosen, batches, strict=True):
        assert len(np.unique(data.factors[batch, k])) == 1
    # The other factors do vary inside a batch (over the whole sample, every value shows up).
    assert all(len(np.unique(data.factors[batches[chosen != k]][..., k])) == SIZES[k] for k in range(4))
    calls = []
    counted = lambda x: calls.append(len(x)) or representations["copy"](x)  # noqa: E731
    cache = CachedRepresentation(data, counted, batch_size=50)
    first = cache(batches.ravel())
    again = cache(batches.ravel())
    assert np.array_equal(first, again)
    # Each item once, in whole blocks of 50 (the items of every block touched).
    blocks = np.unique(batches // 50)
    assert sum(calls) == cache.num_encoded == sum(min(len(data), 50 * (b + 1)) - 50 * b for b in blocks)
    assert np.allclose(first, standardized(data.factors[batches.ravel()]))


def test_cached_codes_do_not_depend_on_which_items_were_asked_for_first(factorial):
    # An encoder's arithmetic can change with the batch it runs in; a metric's score must not
    # change with the metrics that ran before it. Planted: codes shifted by their batch's mean.
    data, representations = factorial
    batch_dependent = lambda x: representations["copy"](x) + 1e-3 * x[:, 0, 0, :4].mean()  # noqa: E731
    wanted = np.random.default_rng(1).integers(len(data), size=200)
    alone = CachedRepresentation(data, batch_dependent, batch_size=64)(wanted)
    after_others = CachedRepresentation(data, batch_dependent, batch_size=64)
    after_others(np.random.default_rng(2).integers(len(data), size=300))
    assert np.array_equal(after_others(wanted), alone)


def test_a_fresh_cache_asked_for_no_items_says_so(factorial):
    # It used to fail with "'NoneType' object is not subscriptable": nothing encoded, no code size.
    data, representations = factorial
    cache = CachedRepresentation(data, representations["copy"])
    with pytest.raises(ValueError, match="representation: expected at least one item index"):
        cache(np.array([], dtype=np.int64))
    assert cache(np.array([0, 1])).shape == (2, 4) and cache(np.array([], dtype=np.int64)).shape == (0, 4)


def test_ground_truth_from_a_dataset_folder_counts_items_without_factors(tmp_path):
    factors = random_factors(40, 9)
    images = np.zeros((40, 4, 4, 1), np.uint8)
    manifest = pd.DataFrame({"item_id": [f"i{i}" for i in range(40)]})
    for k, name in enumerate("abcd"):
        manifest[f"factor_{name}"] = pd.array(factors[:, k], dtype="Int64")
    manifest.loc[[3, 17], "factor_b"] = pd.NA
    write_dataset(tmp_path / "d", images, manifest, factor_names="abcd", factor_sizes=SIZES)
    data = GroundTruthData.from_dataset(Dataset.open(tmp_path / "d"))
    assert len(data) == 38 and data.excluded_items == 2
    assert data.describe()["excluded_items_missing_factors"] == 2
    assert np.array_equal(data.factors, np.delete(factors, [3, 17], axis=0))
    train, test = data.sample_disjoint(30, 20, np.random.default_rng(0))  # more than there are
    assert len(train) + len(test) == 38 and not set(train) & set(test)
    bad = factors.copy()
    bad[0, 0] = 7
    with pytest.raises(ValueError, match="factor_sizes"):
        GroundTruthData(images, bad, factor_sizes=SIZES)


# -- unsupervised --------------------------------------------------------------------------
def test_unsupervised_scores_on_known_distributions():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4000, 3)) * np.array([1.0, 0.5, 0.05])
    assert active_units(means) == 2  # variances 1, 0.25, 0.0025 against the 0.01 threshold
    assert gaussian_total_correlation(means) == pytest.approx(0.0, abs=0.01)
    rho = 0.8
    correlated = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=4000)
    assert gaussian_total_correlation(correlated) == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.05)
    # Identical posteriors: the aggregate posterior is N(0, I) exactly, so TC is 0 exactly.
    assert sampled_total_correlation(np.zeros((300, 3)), np.zeros((300, 3)), 1) == pytest.approx(0, abs=1e-9)
    # Means ~ N(0, S), posterior std s: the aggregate posterior is close to N(0, S + s^2 I).
    aggregate = np.array([[1.25, rho], [rho, 1.25]])
    exact = 0.5 * (np.log(np.diag(aggregate)).sum() - np.linalg.slogdet(aggregate)[1])
    estimate = sampled_total_correlation(correlated[:2000], np.full((2000, 2), 2 * np.log(0.5)), 12)
    assert estimate == pytest.approx(exact, abs=0.05)
    mu, logvar = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
    expected = np.mean(0.5 * (mu**2 + np.exp(logvar) - 1 - logvar), axis=0)
    assert np.allclose(kl_per_dimension(mu, logvar), expected)
    assert mutual_info_score(correlated) > mutual_info_score(means[:, :2]) + 0.1


# -- anomaly quality -----------------------------------------------------------------------
def sprite_like_images(n, seed):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 16, 16, 1), np.uint8)
    for image, (y, x) in zip(images, rng.integers(2, 9, size=(n, 2)), strict=True):
        image[y:y + 5, x:x + 5] = 255
    return images


def test_planted_defects_change_the_chosen_images_only():
    images = sprite_like_images(60, 0)
    planted = plant_defects(images, fraction=0.5, seed=3)
    assert planted.labels.sum() == 30
    changed = np.array([not np.array_equal(a, b) for a, b in zip(images, planted.images, strict=True)])
    assert np.array_equal(changed, planted.labels == 1)
    assert sorted(set(planted.kinds[planted.labels == 1])) == ["missing_corner", "noise", "second_object"]
    assert set(planted.kinds[planted.labels == 0]) == {""}
    corner = planted.images[planted.kinds == "missing_corner"]
    assert (corner.astype(int).sum(axis=(1, 2, 3)) < 25 * 255).all()  # a part of the square is gone
    with pytest.raises(ValueError, match="kinds"):
        plant_defects(images, kinds=("scratch",))


def test_anomaly_auroc_near_one_when_easy_and_near_half_for_a_random_score():
    images = sprite_like_images(400, 1)
    planted = plant_defects(images, fraction=0.5, seed=2)
    # An easy planted case: the score is how far an image is from a clean 5 x 5 square.
    score = np.abs(planted.images.astype(float).sum(axis=(1, 2, 3)) / 255 - 25)
    score += (planted.images.astype(int) % 255 != 0).sum(axis=(1, 2, 3))  # grey noise pixels
    easy = anomaly_quality(score, planted.labels)
    assert easy["auroc"] > 0.97 and easy["auprc"] > 0.95
    random_score = np.random.default_rng(5).normal(size=len(images))
    chance = anomaly_quality(random_score, planted.labels)
    assert abs(chance["auroc"] - 0.5) < 0.08
    assert chance["positive_fraction"] == 0.5 and chance["num_anomalies"] == 200
    with pytest.raises(ValueError, match="need both"):
        anomaly_quality([1.0, 2.0], [1, 1])


def test_protocol_defaults_are_disentanglement_lib():
    p = MetricProtocol()
    assert (p.mig_num_train, p.mig_num_bins, p.dci_num_train, p.dci_num_test) == (10_000, 20, 10_000, 5_000)
    assert (p.factor_vae_batch_size, p.factor_vae_num_train, p.factor_vae_num_eval,
            p.factor_vae_num_variance_estimate, p.factor_vae_prune_threshold) == (64, 10_000, 5_000, 10_000, 0.05)
    assert (p.beta_vae_batch_size, p.beta_vae_num_train, p.beta_vae_num_eval) == (64, 10_000, 5_000)
    # `fast` (pipeline parameter metric_protocol) keeps every sample count: only DCI's classifier differs.
    fast, reference = MetricProtocol.named("fast").as_dict(), p.as_dict()
    assert {k for k in fast if fast[k] != reference[k]} == {"name", "dci_importance"}
    assert fast["dci_importance"] == "random_forest"
    assert MetricProtocol().scaled(0.01).factor_vae_num_train == 100
    with pytest.raises(ValueError, match="metric protocol"):
        MetricProtocol.named("quick")


# -- one scoring path: compute_* through kubevae.metrics.disentanglement ------------------------
def test_each_metric_draws_from_its_own_stream(factorial):
    """A metric's score depends on the seed, not on the metrics computed before it (the gate
    computes one; the evaluate step all of them)."""
    from kubevae.metrics import DISENTANGLEMENT_METRICS, compute, compute_all

    data, representations = factorial
    protocol = MetricProtocol.fast().scaled(0.03)
    together = compute_all(data, CachedRepresentation(data, representations["mix"]), 7, protocol)
    for metric in DISENTANGLEMENT_METRICS:
        alone = compute(metric, data, CachedRepresentation(data, representations["mix"]), 7, protocol)
        assert alone.scores == together[metric].scores, metric
    assert together["mig"].settings["num_points"] == min(len(data), protocol.mig_num_train)
    other_seed = compute("factor_vae", data, CachedRepresentation(data, representations["mix"]), 8, protocol)
    assert other_seed.scores != together["factor_vae"].scores


def test_the_resamplers_give_the_score_with_every_item_counted_once(factorial):
    from kubevae.metrics import compute

    data, representations = factorial
    protocol = MetricProtocol.fast().scaled(0.03)
    for metric in ("mig", "factor_vae", "beta_vae"):
        result = compute(metric, data, CachedRepresentation(data, representations["mix"]), 0, protocol)
        assert result.resample(np.ones(result.num_items)) == pytest.approx(result.headline, abs=1e-12)
        # Counting every item twice is the same sample.
        assert result.resample(np.full(result.num_items, 2.0)) == pytest.approx(result.headline, abs=1e-12)
    assert compute("dci", data, CachedRepresentation(data, representations["mix"]), 0, protocol).resample is None


def test_mutual_information_is_sklearns():
    from sklearn.metrics import mutual_info_score as sklearn_mi

    from kubevae.metrics.mig import histogram_discretize, mutual_information_matrix

    rng = np.random.default_rng(5)
    factors = rng.integers(0, [3, 7, 40], size=(2000, 3))
    codes = rng.normal(size=(2000, 5)) + factors[:, [0, 1, 2, 0, 1]] * [1.0, 0.3, 0.05, 0.0, 0.0]
    discrete = histogram_discretize(codes, 20)
    expected = [[sklearn_mi(factors[:, k], discrete[:, j]) for k in range(3)] for j in range(5)]
    assert np.allclose(mutual_information_matrix(discrete, factors), expected, rtol=0, atol=1e-12)
