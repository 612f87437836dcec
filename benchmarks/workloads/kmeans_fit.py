"""One KMeans fit in one process: the job `tcap run -p kmeans` names."""

import numpy as np
from sklearn.cluster import KMeans

data = np.random.default_rng(0).random((200000, 20))
KMeans(n_clusters=8, n_init=3, random_state=0).fit(data)
