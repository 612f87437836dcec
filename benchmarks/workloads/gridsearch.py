"""GridSearchCV with n_jobs=-1 (loky workers) over a BLAS-heavy model."""

import numpy as np
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV

rng = np.random.default_rng(0)
X = rng.random((1500, 50))
y = X @ rng.random(50) + rng.normal(0, 0.1, 1500)
search = GridSearchCV(KernelRidge(kernel="rbf"), {"alpha": [0.1, 1.0], "gamma": [0.01, 0.1]}, cv=3, n_jobs=-1)
search.fit(X, y)
