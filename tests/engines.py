"""Real launchers for the cluster tests: a single-node Slurm cluster on
localhost (munged, slurmctld, slurmd from the distribution's packages,
started in a private directory and stopped afterwards, also when a test
fails) and Open MPI's mpirun. Nothing here fakes a launcher: where the
packages are missing, or the machine does not allow starting the daemons
(not root), the tests that need them skip with the reason."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: mpirun as root needs these; --oversubscribe lets 3 ranks run on 2 slots.
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def mpirun_missing() -> str | None:
    return None if shutil.which("mpirun") else "Open MPI's mpirun is not installed (make engines installs it as root)"


def slurm_missing() -> str | None:
    missing = [name for name in ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "sinfo")
               if shutil.which(name) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)}; make engines installs them as root)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """slurmctld + slurmd + munged for this one node, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for name in list(self.env):
            if name.startswith("SLURM_") and name != "SLURM_CONF":
                del self.env[name]
        self.pidfiles = [root / "run" / "slurmd.pid", root / "run" / "slurmctld.pid", root / "run" / "munged.pid"]

    def start(self) -> None:
        run, state = self.root / "run", self.root / "state"
        for directory in (run, state, self.root / "spool", self.root / "log"):
            directory.mkdir(parents=True, exist_ok=True)
        run.chmod(0o755)  # munged refuses a socket directory others cannot reach
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        socket_path = run / "munge.sock"
        subprocess.run(["munged", f"--key-file={key}", f"--socket={socket_path}",
                        f"--pid-file={run / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                        f"--seed-file={state / 'munged.seed'}", "--force"], check=True, capture_output=True)
        node = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout.splitlines()[0]
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=tcaptest", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
            "CredType=cred/munge", f"AuthInfo=socket={socket_path}", f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={self.root / 'spool'}", f"SlurmctldPidFile={run / 'slurmctld.pid'}",
            f"SlurmdPidFile={run / 'slurmd.pid'}", f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/affinity", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2", "EnforcePartLimits=ALL",
            "MailProg=/bin/true", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none", "JobCompType=jobcomp/none", "MinJobAge=60",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        subprocess.run(["slurmctld", "-f", str(self.conf), "-i"], check=True, env=self.env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env, capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state_text = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True,
                                        text=True).stdout.strip()
            if state_text == "idle":
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Slurm node did not become idle: {state_text!r}; see {self.root / 'log'}")

    def stop(self) -> None:
        """Stop every daemon this cluster started (by their pid files)."""
        for pidfile in self.pidfiles:
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        merged = dict(env or os.environ)
        merged.update(SLURM_CONF=str(self.conf))
        return subprocess.run(argv, env=merged, capture_output=True, text=True, timeout=timeout, cwd=cwd)
