"""Run with ``python -I`` (no probe): writes its own probe record into
$TCAP_REPORT_DIR from the JSON file in argv[1] (its pid filled in), then
hashes on 2 threads for argv[2] seconds; prints its pid."""

import hashlib
import os
import sys
import threading
import time

with open(sys.argv[1]) as f:
    text = f.read().replace('"PID"', str(os.getpid()))
with open(os.path.join(os.environ["TCAP_REPORT_DIR"], f"{os.getpid()}.json"), "w") as f:
    f.write(text)
seconds = float(sys.argv[2])
data = b"x" * (1 << 20)


def work() -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hashlib.sha256(data).digest()


workers = [threading.Thread(target=work) for _ in range(2)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(os.getpid(), flush=True)
