"""Shape 9: cross_val_score(n_jobs=-1) around an OpenMP model (HistGradientBoostingClassifier)."""

import os

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_score

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
ROWS = max(200, round(6000 * SCALE))

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    X = rng.random((ROWS, 30))
    y = (X[:, :5].sum(axis=1) + rng.normal(0, 0.3, ROWS) > 2.5).astype(int)
    iterations = max(5, round(30 * min(SCALE, 1.0)))
    model = HistGradientBoostingClassifier(max_iter=iterations, early_stopping=False, random_state=0)
    print(round(float(cross_val_score(model, X, y, cv=4, n_jobs=-1).mean()), 4))
