"""``tcap kernel install | list | remove`` and the kernels they make, end to end.

The command-line tests run the installed ``tcap`` in an isolated environment
(see conftest.py) with Jupyter's directories in the test's tmp directory, and
install with ``--prefix`` (or ``--user``, which lands in the private
``$JUPYTER_DATA_DIR``), never into the real venv or system.

The kernel tests start real kernels from the installed specs the way
JupyterLab does (jupyter_client's KernelManager and a blocking client, in
this process, so the kernel inherits ``os.environ``: a module fixture points
that at the same isolated directories) and run cells with real numpy and
threadpoolctl. Every kernel is shut down in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap.errors import TcapError
from tcap.kernel import FROZEN, caps_words, check_name, default_name, kernel_argv, kernel_dict, plan_flags

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")
pytest.importorskip("numpy")
pytest.importorskip("threadpoolctl")

from jupyter_client import KernelManager  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")

#: A CPU this process may use: the warn kernel is pinned to it.
CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
VERSION = "{}.{}".format(*sys.version_info[:2])

#: Profile names not among the bundled ones (default, kmeans, physical,
#: pool, serial), so deleting the user's file really makes them disappear.
PROFILE = "tkcap"
CAPS_TEXT = "blas = 1\nopenmp = 1\n"
WARN, ENFORCE, OFF = "tk-warn", "tk-enforce", "tk-off"

WARNING = re.compile(
    r"^tcap: warning: pid (\d+) \((.*)\): openblas \(blas\) has 4 threads, cap 1 \[profile tkcap\]$", re.M
)
ENFORCED = re.compile(r"^tcap: enforced: pid (\d+) \((.*)\): openblas \(blas\) brought back from 4 to 1 threads$", re.M)

# What a kernel reports about itself, as one JSON line on stdout.
FACTS = """
import json, os, sys
import numpy, threadpoolctl
print(json.dumps({
    "pid": os.getpid(),
    "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "TCAP_VERIFY", "TCAP_PROFILE")},
    "affinity": sorted(os.sched_getaffinity(0)),
    "pools": [[p["internal_api"], p["num_threads"]] for p in threadpoolctl.threadpool_info()],
    "probe": "_tcap_probe" in sys.modules,
    "argv": list(sys.orig_argv),
}))
"""
# Then scikit-learn (with its libgomp and scipy's OpenBLAS): every pool, one line.
WITH_SKLEARN = """
import sklearn.cluster
print(json.dumps([[p["internal_api"], p["num_threads"]] for p in threadpoolctl.threadpool_info()]))
"""
# Raise OpenBLAS to 4 threads and use it; print how many OpenBLAS pools there are.
RAISE = """
threadpoolctl.threadpool_limits(4, user_api="blas")
b = numpy.ones((128, 128)) @ numpy.ones((128, 128))
print(sum(p["internal_api"] == "openblas" for p in threadpoolctl.threadpool_info()))
"""
WITHIN = """
import numpy, threadpoolctl
b = numpy.ones((128, 128)) @ numpy.ones((128, 128))
"""
OPENBLAS_THREADS = """
import json, threadpoolctl
print(json.dumps([p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]))
"""


# ---------------------------------------------------------------- helpers


class Jupyter:
    """An isolated tcap environment with private Jupyter directories and a
    ``--prefix`` whose kernels are on Jupyter's search path."""

    def __init__(self, iso: Isolated) -> None:
        self.iso = iso
        root = iso.root
        self.prefix = root / "prefix"
        self.kernels = self.prefix / "share" / "jupyter" / "kernels"
        self.data = root / "jupyter-data"
        self.runtime = root / "jupyter-runtime"
        self.runtime.mkdir()
        self.user_kernels = self.data / "kernels"
        iso.env.update(
            JUPYTER_PATH=str(self.prefix / "share" / "jupyter"),
            JUPYTER_DATA_DIR=str(self.data),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_CONFIG_DIR=str(root / "jupyter-config"),
            IPYTHONDIR=str(root / "ipython"),
        )
        iso.env.pop("JUPYTER_PREFER_ENV_PATH", None)
        iso.env.pop("JUPYTER_PLATFORM_DIRS", None)

    @property
    def env(self) -> dict[str, str]:
        return self.iso.env

    def kernel(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return self.iso.run("kernel", *args)

    def install(self, *args: str, prefix: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """``tcap kernel install ARGS [--prefix PREFIX]``; must succeed."""
        result = self.kernel("install", *args, *(("--prefix", str(self.prefix)) if prefix else ()))
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result

    def spec(self, name: str, kernels: Path | None = None) -> dict[str, Any]:
        return json.loads(((kernels or self.kernels) / name / "kernel.json").read_text())  # type: ignore[no-any-return]

    def listed(self, everywhere: bool = False) -> list[dict[str, Any]]:
        """``tcap kernel list --json``: the specs in this test's directories
        (Jupyter also searches the venv's and the system's, which a test
        cannot hide; ``everywhere``: those too)."""
        result = self.kernel("list", "--json")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        found = json.loads(result.stdout)
        mine = [item for item in found if item["resource_dir"].startswith(str(self.iso.root) + os.sep)]
        return found if everywhere else mine  # type: ignore[no-any-return]

    def list_rows(self) -> list[str]:
        """``tcap kernel list``: its header and the rows of this test's specs."""
        result = self.kernel("list")
        assert result.returncode == 0 and result.stderr == "", result
        lines = result.stdout.splitlines()
        dirs = [item["resource_dir"] for item in self.listed()]
        return lines[:1] + [line for line in lines[1:] if any(f" {d} " in line for d in dirs)]

    def listed_by_name(self) -> dict[str, dict[str, Any]]:
        return {item["name"]: item for item in self.listed()}

    def foreign(self, name: str) -> Path:
        """A plain kernelspec written by hand (not by tcap)."""
        directory = self.kernels / name
        directory.mkdir(parents=True)
        (directory / "kernel.json").write_text(
            json.dumps({"argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                        "display_name": "Plain", "language": "python"})
        )
        return directory

    def tree(self) -> list[str]:
        """Every file under the prefix and the user data directory."""
        return sorted(
            str(path.relative_to(self.iso.root))
            for top in (self.prefix, self.data) if top.exists()
            for path in top.rglob("*")
        )


@pytest.fixture
def jup(iso: Isolated) -> Jupyter:
    return Jupyter(iso)


@pytest.fixture(scope="module")
def kenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """One isolated environment for the kernel tests, with three specs of
    profile tkcap installed; ``os.environ`` is that environment meanwhile,
    since jupyter_client starts kernels with it."""
    jupyter = Jupyter(Isolated(tmp_path_factory.mktemp("kernels")))
    jupyter.iso.write_profile(PROFILE, CAPS_TEXT)
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key not in jupyter.env:
                patch.delenv(key)
        for key, value in jupyter.env.items():
            patch.setenv(key, value)
        jupyter.install("-p", PROFILE, "--cpus", str(CPU), "--name", WARN)
        jupyter.install("-p", PROFILE, "--verify", "enforce", "--name", ENFORCE)
        jupyter.install("-p", PROFILE, "--verify", "off", "--name", OFF)
        yield jupyter


@contextlib.contextmanager
def running(name: str) -> Iterator[tuple[Any, Any]]:
    """A started kernel of spec ``name`` and a ready blocking client; the
    kernel is always shut down (at once) on the way out."""
    runtime = Path(os.environ["JUPYTER_RUNTIME_DIR"])
    km = KernelManager(kernel_name=name, connection_file=str(runtime / f"kernel-{uuid.uuid4()}.json"))
    km.start_kernel()
    kc = None
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def warn_kernel(kenv: Jupyter) -> Iterator[tuple[Any, Any]]:
    """One kernel of the warn spec (pinned to CPU), shared by several tests."""
    with running(WARN) as pair:
        yield pair


@dataclass
class Cell:
    """What one execute request produced: its reply and, from iopub, the
    messages whose parent is that request."""

    reply: dict[str, Any]
    streams: dict[str, str] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return self.streams.get("stdout", "")

    @property
    def stderr(self) -> str:
        return self.streams.get("stderr", "")

    def ok(self) -> Cell:
        assert self.reply["status"] == "ok", (self.reply, self.streams)
        return self

    def json(self) -> Any:
        self.ok()
        return json.loads(self.stdout.strip().splitlines()[-1])

    def tcap_lines(self) -> list[str]:
        return [line for text in self.streams.values() for line in text.splitlines() if "tcap:" in line]


def wait_for(kc: Any, msg_id: str, msg_type: str, timeout: float) -> None:
    """Read iopub until ``msg_type`` for ``msg_id`` (discarding the rest)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {msg_type} for {msg_id} within {timeout} s") from None
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == msg_type:
            return


def collect(kc: Any, msg_id: str, timeout: float = 30) -> Cell:
    """The outputs of request ``msg_id`` until the kernel goes idle, and its reply."""
    cell = Cell(reply={})
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"request {msg_id} not idle within {timeout} s: {cell}") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            cell.streams[content["name"]] = cell.streams.get(content["name"], "") + content["text"]
        elif kind == "execute_result":
            cell.results.append(content["data"].get("text/plain", ""))
        elif kind == "status" and content["execution_state"] == "idle":
            break
    while True:
        try:
            reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no execute_reply for {msg_id} within {timeout} s") from None
        if reply["parent_header"].get("msg_id") == msg_id:
            cell.reply = reply["content"]
            return cell


def execute(kc: Any, code: str, timeout: float = 30) -> Cell:
    return collect(kc, kc.execute(code), timeout)


def kernel_pid(km: Any) -> int:
    """The pid jupyter_client started (and signals, restarts and kills)."""
    return int(km.provisioner.process.pid)


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process ``pid`` has ended (and been reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def tcap_words(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("tcap:")]


# ---------------------------------------------------------------- pure builders


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("kmeans", "tcap-kmeans"),
        ("/some/dir/kmeans.toml", "tcap-kmeans"),
        ("./rel/GPU_v2.toml", "tcap-gpu_v2"),
        ("My Profile", "tcap-my-profile"),
        ("a b!!c", "tcap-a-b-c"),
        ("--edge--", "tcap-edge"),
        ("x.y", "tcap-x.y"),
        ("Zürich", "tcap-z-rich"),
        ("***", "tcap-profile"),
        ("/dir/.toml", "tcap-profile"),
    ],
)
def test_default_name(profile: str, expected: str) -> None:
    assert default_name(profile) == expected
    assert check_name(expected) == expected


@pytest.mark.parametrize(("name", "stored"), [("Foo.Bar_1-2", "foo.bar_1-2"), ("tcap-x", "tcap-x"), ("9", "9")])
def test_check_name_accepts_and_lowercases(name: str, stored: str) -> None:
    assert check_name(name) == stored


@pytest.mark.parametrize("name", ["", "bad name", "a/b", "ü", "a:b", "tab\there", "new\nline"])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(TcapError) as caught:
        check_name(name)
    assert caught.value.code == 2
    assert repr(name) in str(caught.value)
    assert "letters, digits" in str(caught.value)


@pytest.mark.parametrize("name", [".", ".."])
def test_check_name_rejects_dot_names(name: str) -> None:
    with pytest.raises(TcapError):
        check_name(name)


@pytest.mark.parametrize(
    ("blas", "openmp", "words"),
    [(1, 1, "1 thread"), (4, 4, "4 threads"), (1, 4, "blas 1, openmp 4"), (8, 2, "blas 8, openmp 2")],
)
def test_caps_words(blas: int, openmp: int, words: str) -> None:
    assert caps_words(blas, openmp) == words


def test_plan_flags_order_and_repeats() -> None:
    options = {"set": ["A=1", "B=2"], "verify": "warn", "blas": "2", "profile": "/p/x.toml", "threads": None,
               "name": "ignored", "cpus": "0-1"}
    assert plan_flags(options) == [
        "--profile", "/p/x.toml", "--blas", "2", "--cpus", "0-1", "--verify", "warn", "--set", "A=1", "--set", "B=2",
    ]
    assert plan_flags({}) == []


def test_kernel_argv_not_frozen() -> None:
    argv = kernel_argv("/t/python", "/k/python", ["--profile", "p", "--blas", "1"], frozen=False)
    assert argv == [
        "/t/python", "-m", "tcap", "run", "--profile", "p", "--blas", "1", "--kernel", "--",
        "/k/python", "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]


def test_kernel_argv_frozen_points_at_the_plan_in_the_spec_dir() -> None:
    argv = kernel_argv("/t/python", "/k/python", ["--profile", "p", "--blas", "1"], frozen=True)
    assert argv == [
        "/t/python", "-m", "tcap", "run", "--plan", "{resource_dir}/" + FROZEN, "--kernel", "--",
        "/k/python", "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]
    assert FROZEN == "tcap-plan.json"


def test_kernel_dict() -> None:
    argv = ["a", "b"]
    meta = {"made_by": "tcap", "profile": "p"}
    spec = kernel_dict(argv, "Shown", meta)
    assert spec == {
        "argv": ["a", "b"],
        "display_name": "Shown",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True, "tcap": {"made_by": "tcap", "profile": "p"}},
    }
    assert spec["argv"] is not argv and spec["metadata"]["tcap"] is not meta  # copies
    assert json.loads(json.dumps(spec)) == spec


# ---------------------------------------------------------------- kernel install


def test_install_writes_the_spec(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    result = jup.install("-p", PROFILE)
    directory = jup.kernels / f"tcap-{PROFILE}"
    assert result.stdout == f"installed kernel tcap-{PROFILE} in {directory}\n"
    assert result.stderr == ""
    spec = jup.spec(f"tcap-{PROFILE}")
    argv = spec["argv"]
    assert os.path.samefile(argv[0], PYTHON)
    assert argv[1:] == [
        "-m", "tcap", "run", "--profile", PROFILE, "--kernel", "--",
        argv[8], "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]
    assert os.path.samefile(argv[8], PYTHON)
    assert spec["display_name"] == f"Python {VERSION} (tcap: {PROFILE}, 1 thread)"
    assert spec["language"] == "python"
    assert spec["interrupt_mode"] == "signal"
    assert spec["metadata"]["tcap"] == {
        "made_by": "tcap",
        "profile": PROFILE,
        "flags": ["--profile", PROFILE],
        "frozen": False,
        "python": argv[8],
        "tcap_python": argv[0],
    }
    assert not (directory / FROZEN).exists()
    assert (directory / "logo-64x64.png").is_file()


def test_install_flags_profile_path_and_display_name(jup: Jupyter) -> None:
    path = jup.iso.write_profile("Odd Name", "blas = 2\nopenmp = 1\n", directory=jup.iso.work)
    jup.install("-p", "Odd Name.toml", "--openmp", "2", "--cpus", str(CPU), "--set", "X=1", "--set", "Y=2",
                "--verify", "enforce")
    spec = jup.spec("tcap-odd-name")  # named after the file's stem
    flags = ["--profile", str(path), "--openmp", "2", "--cpus", str(CPU), "--verify", "enforce",
             "--set", "X=1", "--set", "Y=2"]
    assert spec["metadata"]["tcap"]["flags"] == flags
    assert spec["metadata"]["tcap"]["profile"] == str(path)  # made absolute: the kernel starts elsewhere
    assert spec["argv"][4:4 + len(flags)] == flags
    assert spec["display_name"] == f"Python {VERSION} (tcap: Odd Name, 2 threads)"

    jup.install("-p", "Odd Name.toml", "--openmp", "4", "--name", "Mixed.Case", "--display-name", "My kernel")
    spec = jup.spec("mixed.case")  # Jupyter's names are lowercase
    assert spec["display_name"] == "My kernel"
    assert sorted(p.name for p in jup.kernels.iterdir()) == ["mixed.case", "tcap-odd-name"]


def test_install_user_lands_in_jupyter_data_dir(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    result = jup.install("-p", PROFILE, "--user", prefix=False)
    assert result.stdout == f"installed kernel tcap-{PROFILE} in {jup.user_kernels / f'tcap-{PROFILE}'}\n"
    assert result.stderr == ""  # the user directory is on the search path
    assert jup.spec(f"tcap-{PROFILE}", jup.user_kernels)["metadata"]["tcap"]["profile"] == PROFILE
    assert not jup.prefix.exists()
    assert [item["resource_dir"] for item in jup.listed()] == [str(jup.user_kernels / f"tcap-{PROFILE}")]


def test_install_off_the_search_path_warns(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    elsewhere = jup.iso.root / "elsewhere"
    result = jup.kernel("install", "-p", PROFILE, "--prefix", str(elsewhere))
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tcap: warning: {elsewhere / 'share' / 'jupyter' / 'kernels'} is not on Jupyter's")
    assert "JUPYTER_PATH" in line
    assert (elsewhere / "share" / "jupyter" / "kernels" / f"tcap-{PROFILE}" / "kernel.json").is_file()
    assert jup.listed() == []  # as the warning says: Jupyter does not find it


@pytest.mark.parametrize("name", ["bad name", "a/b", "x:y"])
def test_install_invalid_name(jup: Jupyter, name: str) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    line = jup.iso.error_line(jup.kernel("install", "-p", PROFILE, "--name", name, "--prefix", str(jup.prefix)), 2)
    assert f"invalid kernel name {name!r}" in line
    assert jup.tree() == []


@pytest.mark.parametrize("name", [".", ".."])
def test_install_dot_name_deletes_nothing(jup: Jupyter, name: str) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    other = jup.foreign("other")
    result = jup.kernel("install", "-p", PROFILE, "--name", name, "--force", "--prefix", str(jup.prefix))
    assert (other / "kernel.json").is_file(), result.stderr
    jup.iso.error_line(result, 2)


def test_install_existing_name_needs_force(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    jup.install("-p", PROFILE, "--display-name", "first")
    directory = jup.kernels / f"tcap-{PROFILE}"
    (directory / "mine.txt").write_text("kept")
    before = (directory / "kernel.json").read_bytes()

    result = jup.kernel("install", "-p", PROFILE, "--display-name", "second", "--prefix", str(jup.prefix))
    line = jup.iso.error_line(result, 2)
    assert f"kernel 'tcap-{PROFILE}' already exists in {directory}" in line and "--force" in line
    assert (directory / "kernel.json").read_bytes() == before
    assert (directory / "mine.txt").read_text() == "kept"

    jup.install("-p", PROFILE, "--display-name", "second", "--force")
    assert jup.spec(f"tcap-{PROFILE}")["display_name"] == "second"
    assert not (directory / "mine.txt").exists()  # replaced, not merged
    assert [item["display_name"] for item in jup.listed()] == ["second"]


def test_install_unknown_profile(jup: Jupyter) -> None:
    line = jup.iso.error_line(jup.kernel("install", "-p", "tk-nosuch", "--prefix", str(jup.prefix)), 2)
    assert "no profile named 'tk-nosuch'" in line
    assert jup.tree() == []


@pytest.mark.parametrize(
    "places",
    [["--user", "--prefix", "PREFIX"], ["--sys-prefix", "--user"], ["--sys-prefix", "--prefix", "PREFIX"]],
)
def test_install_places_are_exclusive(jup: Jupyter, places: list[str]) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    args = [str(jup.prefix) if arg == "PREFIX" else arg for arg in places]
    line = jup.iso.error_line(jup.kernel("install", "-p", PROFILE, *args), 2)
    assert "choose one of --user, --sys-prefix and --prefix" in line
    assert jup.tree() == []


def test_install_strict_is_refused(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    result = jup.kernel("install", "-p", PROFILE, "--verify", "strict", "--prefix", str(jup.prefix))
    line = jup.iso.error_line(result, 2)
    assert "strict" in line and "warn or enforce" in line
    assert jup.tree() == []


def test_install_python_without_ipykernel(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    bare = jup.iso.root / "bare"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = bare / "bin" / "python"
    result = jup.kernel("install", "-p", PROFILE, "--python", str(python), "--prefix", str(jup.prefix))
    line = jup.iso.error_line(result, 2)
    assert f"{python} has no ipykernel" in line
    assert f"'{python} -m pip install ipykernel'" in line
    assert jup.tree() == []


@pytest.mark.parametrize("python", ["/nonexistent/python3", "no-such-python-tk"])
def test_install_python_missing(jup: Jupyter, python: str) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    line = jup.iso.error_line(jup.kernel("install", "-p", PROFILE, "--python", python, "--prefix", str(jup.prefix)), 2)
    assert line == f"tcap: error: --python {python}: no such executable"
    assert jup.tree() == []


# ---------------------------------------------------------------- kernel list


def test_list_shows_tcap_specs_with_profile_and_caps(jup: Jupyter) -> None:
    assert jup.listed() == []
    if jup.listed(everywhere=True) == []:  # none installed outside the test either
        result = jup.kernel("list")
        assert result.returncode == 0 and result.stdout.startswith("no tcap kernels"), result

    jup.iso.write_profile("tklist", "blas = 1\nopenmp = 2\n")
    jup.install("-p", "tklist", "--cpus", str(CPU), "--verify", "enforce")
    jup.install("-p", "tklist", "--freeze", "--name", "tk-frozen", "--blas", "3")
    jup.foreign("plain")
    (jup.kernels / "broken").mkdir()
    (jup.kernels / "broken" / "kernel.json").write_text("{not json")

    found = jup.listed_by_name()
    assert sorted(found) == ["tcap-tklist", "tk-frozen"]  # not the plain nor the broken spec
    live = found["tcap-tklist"]
    assert live["profile"] == "tklist" and live["frozen"] is False
    assert live["caps"] == {"blas": 1, "openmp": 2}
    assert live["cpus"] == 1 and live["verify"] == "enforce"
    assert live["stale"] == []
    assert live["resource_dir"] == str(jup.kernels / "tcap-tklist")
    assert live["display_name"] == f"Python {VERSION} (tcap: tklist, blas 1, openmp 2)"
    assert os.path.samefile(live["python"], PYTHON)
    frozen = found["tk-frozen"]
    assert frozen["frozen"] is True and frozen["caps"] == {"blas": 3, "openmp": 2} and frozen["stale"] == []

    text = jup.kernel("list").stdout
    assert str(jup.kernels / "plain") not in text and str(jup.kernels / "broken") not in text
    lines = jup.list_rows()
    assert lines[0].split() == ["NAME", "PROFILE", "CAPS", "DIRECTORY", "STATUS"]
    assert len(lines) == 3
    row = next(line for line in lines if line.startswith("tcap-tklist "))
    assert row.split() == ["tcap-tklist", "tklist", "blas", "1,", "openmp", "2", str(jup.kernels / "tcap-tklist"), "ok"]
    row = next(line for line in lines if line.startswith("tk-frozen "))
    assert "tklist (frozen)" in row and row.split()[-2:] == [str(jup.kernels / "tk-frozen"), "ok"]


def test_list_profile_gone_makes_live_spec_stale(jup: Jupyter) -> None:
    path = jup.iso.write_profile("tkgone", CAPS_TEXT)
    jup.install("-p", "tkgone")
    jup.install("-p", "tkgone", "--freeze", "--name", "tk-gone-frozen")
    path.unlink()

    found = jup.listed_by_name()
    (problem,) = found["tcap-tkgone"]["stale"]
    assert problem.startswith("profile: no profile named 'tkgone'")
    assert found["tcap-tkgone"]["caps"] is None
    assert found["tk-gone-frozen"]["stale"] == []  # the frozen plan does not need the profile
    assert found["tk-gone-frozen"]["caps"] == {"blas": 1, "openmp": 1}

    row = next(line for line in jup.kernel("list").stdout.splitlines() if line.startswith("tcap-tkgone "))
    assert row.split()[:5] == ["tcap-tkgone", "tkgone", "?", str(jup.kernels / "tcap-tkgone"), "stale:"]
    assert "stale: profile: no profile named 'tkgone'" in row


def test_list_frozen_plan_gone_is_stale(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    jup.install("-p", PROFILE, "--freeze")
    (jup.kernels / f"tcap-{PROFILE}" / FROZEN).unlink()
    (problem,) = jup.listed()[0]["stale"]
    assert problem.startswith("frozen plan unreadable")


def test_frozen_plan_whose_probe_files_moved(jup: Jupyter) -> None:
    # tcap reinstalled elsewhere: the frozen recipe's bootstrap path is gone.
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    jup.install("-p", PROFILE, "--freeze")
    plan_file = jup.kernels / f"tcap-{PROFILE}" / FROZEN
    data = json.loads(plan_file.read_text())
    assert data["recipe"]["bootstrap"]
    data["recipe"]["bootstrap"] = str(jup.iso.root / "old-tcap" / "_bootstrap")
    plan_file.write_text(json.dumps(data))
    (problem,) = jup.listed()[0]["stale"]
    assert problem.startswith("frozen plan: the probe's files are gone")

    result = jup.iso.run("run", "--plan", str(plan_file), "--kernel", "--dry-run", "--", "true")
    assert result.returncode == 0, result.stderr
    assert "the probe's files" in result.stderr and "running without verification" in result.stderr
    assert result.stdout.startswith(f"frozen plan {plan_file}: verify warn")
    assert "--ext=_tcap_probe" not in result.stdout
    assert "OPENBLAS_NUM_THREADS=1" in result.stdout


def test_list_interpreter_gone_is_stale(jup: Jupyter) -> None:
    # A venv's python found through a symlinked venv directory (a symlink to
    # the bare executable would lose the venv, and with it ipykernel).
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    venv = jup.iso.root / "venv-link"
    venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    python = venv / "bin" / "python"
    jup.install("-p", PROFILE, "--python", str(python))
    spec = jup.spec(f"tcap-{PROFILE}")
    assert spec["argv"][spec["argv"].index("--") + 1] == str(python)
    assert jup.listed()[0]["stale"] == []

    venv.unlink()
    (item,) = jup.listed()
    assert item["stale"] == [f"interpreter gone: {python}"]
    assert item["caps"] == {"blas": 1, "openmp": 1}  # the profile is still fine
    assert f"stale: interpreter gone: {python}" in jup.kernel("list").stdout


# ---------------------------------------------------------------- kernel remove


def test_remove_a_tcap_spec(jup: Jupyter) -> None:
    jup.iso.write_profile(PROFILE, CAPS_TEXT)
    jup.install("-p", PROFILE)
    jup.install("-p", PROFILE, "--name", "tk-other")
    directory = jup.kernels / f"tcap-{PROFILE}"
    result = jup.kernel("remove", f"TCAP-{PROFILE.upper()}")  # names are case-insensitive
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed kernel tcap-{PROFILE} ({directory})\n"
    assert not directory.exists()
    assert [item["name"] for item in jup.listed()] == ["tk-other"]


@pytest.mark.parametrize("kind", ["plain", "broken"])
def test_remove_refuses_a_foreign_spec_without_force(jup: Jupyter, kind: str) -> None:
    spec = jup.foreign(kind)
    if kind == "broken":
        (spec / "kernel.json").write_text("{not json")
    line = jup.iso.error_line(jup.kernel("remove", kind), 2)
    assert f"kernel {kind!r} ({spec}) was not made by tcap" in line and "--force" in line
    assert (spec / "kernel.json").is_file()

    result = jup.kernel("remove", "--force", kind)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed kernel {kind} ({spec})\n"
    assert not spec.exists()


def test_remove_unknown_name(jup: Jupyter) -> None:
    jup.foreign("plain")
    line = jup.iso.error_line(jup.kernel("remove", "tk-nosuch"), 2)
    assert "no kernel named 'tk-nosuch'" in line
    assert (jup.kernels / "plain").is_dir()
    jup.iso.error_line(jup.kernel("remove"), 2)


# ---------------------------------------------------------------- real kernels


def test_kernel_starts_capped_and_pinned_in_the_pid_jupyter_started(warn_kernel: tuple[Any, Any]) -> None:
    km, kc = warn_kernel
    facts = execute(kc, FACTS + WITH_SKLEARN).ok()
    report = json.loads(facts.stdout.splitlines()[0])
    assert report["pid"] == kernel_pid(km)  # tcap exec'ed the kernel
    assert report["argv"][1:3] == ["-m", "ipykernel_launcher"] and "tcap" not in report["argv"][1:]
    assert "--ext=_tcap_probe" in report["argv"]
    assert report["env"] == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                             "TCAP_VERIFY": "warn", "TCAP_PROFILE": PROFILE}
    assert report["affinity"] == [CPU]
    assert report["probe"] is True
    assert ["openblas", 1] in report["pools"]
    assert all(threads == 1 for _, threads in report["pools"]), report["pools"]
    # scikit-learn brings its libgomp (an OpenMP pool) and scipy's OpenBLAS.
    pools = json.loads(facts.stdout.splitlines()[1])
    assert "openmp" in [api for api, _ in pools] and len(pools) > len(report["pools"])
    assert all(threads == 1 for _, threads in pools), pools
    assert facts.tcap_lines() == []


def test_tcap_magic_and_load_ext(warn_kernel: tuple[Any, Any]) -> None:
    _km, kc = warn_kernel
    execute(kc, WITHIN).ok()
    table = execute(kc, "%tcap").ok()
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"tcap: profile {PROFILE}, verify warn, ")
    assert lines[0].endswith(" 1 CPU in affinity")
    assert lines[1].split() == ["LIBRARY", "API", "THREADS", "CAP", "STATUS"]
    rows = [line.split() for line in lines[2:] if line.startswith("openblas")]
    assert rows and all(row == ["openblas", "blas", "1", "1", "ok"] for row in rows), lines
    assert table.stderr == ""

    loaded = execute(kc, "%load_ext tcap").ok()
    assert loaded.streams == {}
    hooks = execute(kc, "print(sum(getattr(f, '__name__', '') == '_after_cell' "
                        "for f in get_ipython().events.callbacks['post_run_cell']))").json()
    assert hooks == 1  # loading it again does not check twice per cell
    assert "LIBRARY" in execute(kc, "%tcap").ok().stdout


def test_tcap_magic_shows_the_busy_threads_observed(warn_kernel: tuple[Any, Any]) -> None:
    _km, kc = warn_kernel
    execute(kc, "import numpy, time\na = numpy.random.rand(300, 300)\nstart = time.time()\n"
                "while time.time() - start < 1.5:\n    a @ a").ok()
    lines = execute(kc, "%tcap").ok().stdout.splitlines()
    observed = [line for line in lines if line.startswith("observed: ")]
    assert len(observed) == 1, lines
    # The cell's loop kept the main thread (and OpenBLAS at 1, no other) busy: within the caps.
    assert observed[0].startswith("observed: at most 1 busy thread at once"), observed
    assert observed[0].endswith("; within what the caps allow"), observed


def test_cell_over_cap_warns_in_its_own_output(warn_kernel: tuple[Any, Any]) -> None:
    km, kc = warn_kernel
    try:
        within = execute(kc, WITHIN).ok()
        assert within.tcap_lines() == []

        over = execute(kc, RAISE).ok()
        pools = int(over.stdout.strip())
        warnings = WARNING.findall(over.stderr)
        assert len(warnings) == pools >= 1, over.streams
        assert {int(pid) for pid, _ in warnings} == {kernel_pid(km)}
        assert all("ipykernel_launcher" in command for _, command in warnings)
        assert tcap_words(over.stderr) == over.stderr.splitlines()  # nothing else on stderr
        assert "tcap" not in over.stdout
        assert ENFORCED.findall(over.stderr) == []

        after = execute(kc, "x = 1 + 1").ok()
        assert after.streams == {}  # still over cap, but already reported
        assert execute(kc, OPENBLAS_THREADS).json() == [4] * pools  # warn does not bring it back
    finally:
        back = execute(kc, "threadpoolctl.threadpool_limits(1, user_api='blas')")
    assert back.ok().tcap_lines() == []


def test_interrupt_a_running_cell(warn_kernel: tuple[Any, Any]) -> None:
    km, kc = warn_kernel
    pid = kernel_pid(km)
    msg_id = kc.execute("import time\ntime.sleep(30)\n")
    wait_for(kc, msg_id, "execute_input", timeout=30)
    time.sleep(0.5)
    started = time.monotonic()
    km.interrupt_kernel()
    cell = collect(kc, msg_id, timeout=20)
    assert time.monotonic() - started < 10
    assert cell.reply["status"] == "error"
    assert cell.reply["ename"] == "KeyboardInterrupt"
    assert km.is_alive()
    assert execute(kc, "import os\nprint(os.getpid())").json() == pid == kernel_pid(km)


def test_restart_keeps_the_caps(warn_kernel: tuple[Any, Any]) -> None:
    km, kc = warn_kernel
    old = execute(kc, FACTS).json()
    km.restart_kernel()
    kc.wait_for_ready(timeout=60)
    new = execute(kc, FACTS).json()
    assert new["pid"] == kernel_pid(km) != old["pid"]
    assert gone(old["pid"])
    assert new["env"] == old["env"] and new["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert new["affinity"] == [CPU]
    assert new["probe"] is True and "--ext=_tcap_probe" in new["argv"]
    assert all(threads == 1 for _, threads in new["pools"]), new["pools"]


def test_clean_shutdown(kenv: Jupyter) -> None:
    marker = kenv.iso.root / "shutdown-marker"
    with running(WARN) as (km, kc):
        pid = kernel_pid(km)
        assert os.path.dirname(km.connection_file) == str(kenv.runtime)
        execute(kc, f"import atexit\natexit.register(lambda: open({str(marker)!r}, 'w').write('bye'))").ok()
        kc.stop_channels()
        km.shutdown_kernel()
        assert not km.is_alive()
        assert gone(pid)
        assert not os.path.exists(km.connection_file)  # cleaned up
    assert marker.read_text() == "bye"  # it exited by itself, running its atexit handlers


def test_enforce_kernel_brings_the_pool_back(kenv: Jupyter) -> None:
    with running(ENFORCE) as (km, kc):
        within = execute(kc, WITHIN).ok()
        assert within.streams == {}

        over = execute(kc, RAISE).ok()
        pools = int(over.stdout.strip())
        warnings, enforced = WARNING.findall(over.stderr), ENFORCED.findall(over.stderr)
        assert len(warnings) == len(enforced) == pools >= 1, over.streams
        assert {int(pid) for pid, _ in warnings + enforced} == {kernel_pid(km)}
        assert len(tcap_words(over.stderr)) == 2 * pools

        after = execute(kc, OPENBLAS_THREADS)
        assert after.json() == [1] * pools
        assert after.tcap_lines() == []


def test_verify_off_kernel_has_no_probe(kenv: Jupyter) -> None:
    with running(OFF) as (km, kc):
        facts = execute(kc, FACTS).json()
        assert facts["pid"] == kernel_pid(km)
        assert facts["probe"] is False
        assert "--ext=_tcap_probe" not in facts["argv"]
        assert facts["env"]["OPENBLAS_NUM_THREADS"] == "1"  # the caps still apply
        assert facts["env"]["TCAP_VERIFY"] is None
        over = execute(kc, RAISE).ok()
        assert over.tcap_lines() == []
        assert over.stderr == ""
        assert execute(kc, "%load_ext tcap").ok().streams == {}
        assert "LIBRARY" in execute(kc, "%tcap").ok().stdout


def test_freeze_keeps_the_plan_while_a_live_spec_follows_the_profile(kenv: Jupyter) -> None:
    path = kenv.iso.write_profile("tkfreeze", CAPS_TEXT)
    kenv.install("-p", "tkfreeze", "--freeze", "--name", "tk-frozen")
    kenv.install("-p", "tkfreeze", "--name", "tk-live")
    frozen_dir = kenv.kernels / "tk-frozen"
    argv = kenv.spec("tk-frozen")["argv"]
    assert argv[3:7] == ["run", "--plan", "{resource_dir}/" + FROZEN, "--kernel"]
    assert "--profile" not in argv
    assert kenv.spec("tk-frozen")["metadata"]["tcap"]["frozen"] is True
    stored = json.loads((frozen_dir / FROZEN).read_text())
    assert ["OPENBLAS_NUM_THREADS", "1"] in stored["recipe"]["env"]
    assert "--plan" not in kenv.spec("tk-live")["argv"]

    with running("tk-live") as (km, kc):
        first = execute(kc, FACTS).json()
        assert first["env"]["OPENBLAS_NUM_THREADS"] == first["env"]["OMP_NUM_THREADS"] == "1"
        path.write_text("blas = 2\nopenmp = 2\n")  # same size: only the mtime tells
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        second = execute(kc, FACTS).json()
        assert second["pid"] != first["pid"]
        assert second["env"]["OPENBLAS_NUM_THREADS"] == second["env"]["OMP_NUM_THREADS"] == "2"
        assert ["openblas", 2] in second["pools"]

    with running("tk-frozen") as (km, kc):
        facts = execute(kc, FACTS).json()
        assert facts["pid"] == kernel_pid(km)
        assert facts["env"]["OPENBLAS_NUM_THREADS"] == facts["env"]["OMP_NUM_THREADS"] == "1"
        assert ["openblas", 1] in facts["pools"]
        assert facts["probe"] is True
        over = execute(kc, RAISE).ok()
        assert re.search(r"openblas \(blas\) has 4 threads, cap 1 \[profile tkfreeze\]$", over.stderr, re.M)

    listed = kenv.listed_by_name()
    assert listed["tk-frozen"]["caps"] == {"blas": 1, "openmp": 1}
    assert listed["tk-live"]["caps"] == {"blas": 2, "openmp": 2}


def test_live_kernel_whose_profile_turned_strict_runs_as_warn(kenv: Jupyter, capfd: pytest.CaptureFixture[str]) -> None:
    # install refuses strict, but a live spec's profile may say so later:
    # the kernel must still be exec'ed (its pid is Jupyter's), checking as warn.
    path = kenv.iso.write_profile("tkstrict", CAPS_TEXT)
    kenv.install("-p", "tkstrict", "--name", "tk-strict")
    path.write_text(CAPS_TEXT + 'verify = "strict"\n')
    capfd.readouterr()
    with running("tk-strict") as (km, kc):
        facts = execute(kc, FACTS).json()
        assert facts["pid"] == kernel_pid(km)
        assert facts["env"]["TCAP_VERIFY"] == "warn" and facts["env"]["OPENBLAS_NUM_THREADS"] == "1"
        assert facts["probe"] is True
        over = execute(kc, RAISE).ok()
        assert re.search(r"openblas \(blas\) has 4 threads, cap 1 \[profile tkstrict\]$", over.stderr, re.M)
    notes = tcap_words(capfd.readouterr().err)  # tcap's own stderr, before the exec
    assert notes == ["tcap: note: verify strict needs tcap to supervise; a kernel is exec'ed, so it runs as warn"]
