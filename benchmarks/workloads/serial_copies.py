"""A program that runs copies of itself: 2 concurrent processes, each a loop
of small matrix products (the job `-p serial` names: parallel by processes)."""

import subprocess
import sys

import numpy as np

if len(sys.argv) > 1:
    rng = np.random.default_rng(int(sys.argv[1]))
    for _ in range(300):
        a = rng.random((200, 200))
        a @ a
else:
    children = [subprocess.Popen([sys.executable, __file__, str(seed)]) for seed in range(2)]
    sys.exit(max(child.wait() for child in children))
