"""THREADS threads hashing for SECONDS (hashlib releases the GIL on large
buffers: each thread is busy on its own); prints its pid."""

import hashlib
import os
import sys
import threading
import time

threads, seconds = int(sys.argv[1]), float(sys.argv[2])
data = b"x" * (1 << 20)


def work() -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hashlib.sha256(data).digest()


workers = [threading.Thread(target=work, name=f"hash-{index}") for index in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(os.getpid(), flush=True)
