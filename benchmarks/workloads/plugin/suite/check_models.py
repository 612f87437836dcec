"""scikit-learn-style model tests: small fits (OpenMP in KMeans and the
histogram boosting, BLAS in the linear models and PCA)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs, make_classification
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge

from conftest import size

ROWS = size(3000, least=60)


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_finds_the_blobs(seed: int) -> None:
    x, _ = make_blobs(ROWS, n_features=12, centers=6, random_state=seed)
    model = KMeans(6, n_init=3, random_state=seed).fit(x)
    assert len(set(model.labels_)) == 6


@pytest.mark.parametrize("seed", range(6))
def test_logistic_regression_learns(seed: int) -> None:
    x, y = make_classification(ROWS, n_features=30, n_informative=10, random_state=seed)
    model = LogisticRegression(max_iter=300).fit(x, y)
    assert model.score(x, y) > 0.6


@pytest.mark.parametrize("seed", range(4))
def test_hist_gradient_boosting(seed: int) -> None:
    x, y = make_classification(ROWS, n_features=20, random_state=seed)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=seed).fit(x, y)
    assert model.score(x, y) > 0.6


@pytest.mark.parametrize("seed", range(4))
def test_pca_and_ridge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, 60))
    y = x @ rng.standard_normal(60)
    z = PCA(20, random_state=seed).fit_transform(x)
    assert z.shape == (ROWS, 20)
    assert Ridge(alpha=1e-3).fit(x, y).score(x, y) > 0.99
