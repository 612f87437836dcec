"""The README's tour, run as a reader would run it.

Every fenced block of the README's sections before "Documentation" is run
for real: a ``console`` block as one bash script (so an ``eval`` or an alias
holds for the commands after it), each ``$`` command's exit code checked,
and where the README shows output, each line shown must match a line of the
real output once numbers that belong to the machine (CPUs, pids, seconds,
sizes) are normalised (``...`` in the README stands for any text, a line
``...`` for lines left out). A ``python`` block runs as a script and an
``ipython`` block under IPython, each followed by a few checks of what it
claims; a ``toml`` block is written where the text before it says and read
back with ``tcap show``. Each block runs in a fresh HOME (XDG directories
under it, an empty site directory, private bookings) with the venv's bin
first on PATH, which is what ``. .venv/bin/activate`` does.

Commands that cannot run here are in SKIPPED with the reason; an entry that
no longer names a README command fails the suite, so the list stays short
and true. The extractor and comparer are tested on README text made wrong on
purpose, so a wrong command or a wrong sample in the README is caught.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import STRIPPED

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
#: The first section after the tour.
TOUR_ENDS = "Documentation"


def _stamp_current() -> bool:
    """``make`` would not reinstall the venv (no pip, no network)."""
    stamp = REPO / ".venv" / ".installed-stamp"
    return (
        BIN == REPO / ".venv" / "bin"
        and stamp.exists()
        and stamp.stat().st_mtime >= (REPO / "pyproject.toml").stat().st_mtime
        and shutil.which("make") is not None
    )


def _has_plugin() -> bool:
    return any(entry.name == "tcap" for entry in importlib.metadata.entry_points(group="pytest11"))


@dataclass(frozen=True)
class Skip:
    reason: str
    #: Skipped only where this says so (None: always).
    when: Callable[[], bool] | None = None


#: Commands (the start of the command, without its comment) that cannot run here.
SKIPPED = {
    "python3 -m venv .venv": Skip("the tour runs with the venv's bin first on PATH, which is what activating does"),
    "pip install": Skip("installs from an index (network); the venv under test is installed already"),
    "make test": Skip("the whole suite, this test included"),
    "make demo": Skip("pyproject.toml is newer than the venv: make would reinstall it with pip (network)",
                      lambda: not _stamp_current()),
    "tcap run --cpus first:4": Skip("needs 4 usable CPUs", lambda: CPUS < 4),
    "tcap run --cpus auto:4": Skip("needs 4 usable CPUs", lambda: CPUS < 4),
    "mpirun": Skip("an Open MPI launch; tests/test_clusters.py runs it where Open MPI is installed"),
    "srun": Skip("a Slurm job; tests/test_clusters.py runs it on a real single-node cluster"),
    "pytest -n 2 --tcap": Skip("tcap's pytest11 entry point is not installed in this venv (pip install -e .)",
                               lambda: not _has_plugin()),
}

#: Exit codes other than 0 (a command's start, as in SKIPPED).
EXITS: dict[str, frozenset[int]] = {
    "tcap run -p kmeans --verify strict": frozenset({86}),
    "tcap doctor": frozenset({0, 1}),  # 1 when the machine has a hazard
}

#: Programs the tour names, in the work directory. The --report section's
#: train.py is the one its sample shows (docs/verification.md): it runs
#: `sh -c "sleep 1"`, then a spawn Pool(2) whose workers raise BLAS to 8.
LIGHT = "import numpy as np\na = np.random.default_rng(0).random((200, 200))\nprint((a @ a).shape)\n"
ESCAPING = textwrap.dedent("""\
    import multiprocessing
    import os

    import numpy as np
    from threadpoolctl import threadpool_limits


    def fit(seed):
        with threadpool_limits(8, user_api="blas"):
            a = np.random.default_rng(seed).random((400, 400))
            for _ in range(15):
                a = a @ a
                a /= np.abs(a).max()
        return os.getpid()


    if __name__ == "__main__":
        np.ones((50, 50)) @ np.ones((50, 50))
        os.system("sleep 1")
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            print(sorted(pool.map(fit, [0, 1])), flush=True)
    """)
#: A test set for `pytest -n 2 --tcap default`: each worker's pools within its share.
TESTS = textwrap.dedent(f"""\
    import numpy as np
    from threadpoolctl import threadpool_info

    def test_pools_within_the_workers_share():
        np.ones((50, 50)) @ np.ones((50, 50))
        assert max(pool["num_threads"] for pool in threadpool_info()) <= max(1, {CPUS} // 2)
    """)
PROGRAMS = {name: LIGHT for name in ("train.py", "bench.py", "job.py", "fit.py", "solve.py")}
SECTION_PROGRAMS = {"Supervised runs: --report and strict": {"train.py": ESCAPING}}

#: Checks run after a python block that calls the API (in the same process).
AFTER_APPLY = textwrap.dedent("""
    from threadpoolctl import threadpool_info
    assert applied.profile == "serial", applied.profile
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    np.ones((50, 50)) @ np.ones((50, 50))
    sizes = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
    assert sizes and set(sizes.values()) == {1}, sizes
    print("checked:", sizes)
    """)
AFTER_LIMITS = textwrap.dedent(f"""
    from threadpoolctl import threadpool_info
    sizes = {{pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}}
    assert sizes.get("openblas") == {CPUS}, ("restored after the block", sizes)
    with tcap.limits("serial"):
        inside = {{pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}}
    assert set(inside.values()) == {{1}}, ("inside the block", inside)
    print("checked:", sizes, inside)
    """)


# --- the extractor ---------------------------------------------------------------


@dataclass
class Command:
    text: str  # as the README writes it, comment included
    line: int
    shown: list[str] = field(default_factory=list)

    @property
    def bare(self) -> str:
        """The command without its trailing comment."""
        return re.split(r"\s+#\s", self.text, maxsplit=1)[0].strip()


@dataclass
class Block:
    section: str
    lang: str
    text: str
    line: int
    before: str  # the prose between the previous block (or heading) and this one

    def commands(self) -> list[Command]:
        commands: list[Command] = []
        for number, line in enumerate(self.text.splitlines(), self.line + 1):
            if line.startswith("$ "):
                commands.append(Command(line[2:], number))
            elif commands and line.strip():
                commands[-1].shown.append(line)
        return commands


def blocks(markdown: str, ends: str = TOUR_ENDS) -> list[Block]:
    """The fenced blocks of every section before the heading ``ends``."""
    found: list[Block] = []
    section, prose, fence = "", [], None
    body: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                found.append(Block(section, fence, "\n".join(body) + "\n", start, "\n".join(prose)))
                fence, prose = None, []
            else:
                body.append(line)
        elif line.startswith("```"):
            fence, body, start = line[3:].strip(), [], number
        elif line.startswith("#"):
            section, prose = line.lstrip("#").strip(), []
            if section == ends:
                break
        else:
            prose.append(line)
    return found


def skip_for(command: Command) -> Skip | None:
    for start, skip in SKIPPED.items():
        if command.bare.startswith(start) and (skip.when is None or skip.when()):
            return skip
    return None


def expected_exits(command: Command) -> frozenset[int]:
    for start, codes in EXITS.items():
        if command.bare.startswith(start):
            return codes
    return frozenset({0})


# --- the comparer ----------------------------------------------------------------

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def normal(line: str) -> str:
    """A line with every number as N and runs of spaces as one."""
    return " ".join(NUMBER.sub("N", line).split())


def pattern(shown: str) -> re.Pattern[str]:
    """The regular expression a README line stands for: ``...`` is any text."""
    parts = normal(shown).split("...")
    return re.compile("^" + ".*".join(re.escape(part) for part in parts) + "$")


def mismatches(shown: list[str], real: str) -> list[str]:
    """The lines shown that no line of ``real`` matches (each real line
    matches at most one shown line; the most specific are matched first)."""
    wanted = [line for line in shown if line.strip() != "..."]
    lines = [normal(line) for line in real.splitlines()]
    taken = [False] * len(lines)
    missing = set()
    for at in sorted(range(len(wanted)), key=lambda at: -len(wanted[at].replace("...", ""))):
        regex = pattern(wanted[at])
        for index, candidate in enumerate(lines):
            if not taken[index] and regex.match(candidate):
                taken[index] = True
                break
        else:
            missing.add(at)
    return [line for at, line in enumerate(wanted) if at in missing]


# --- running ---------------------------------------------------------------------


class Tour:
    """A fresh reader's account: HOME, XDG directories, site and bookings."""

    def __init__(self, root: Path, section: str = "") -> None:
        self.home = root / "home"
        self.work = self.home / "work"
        self.site = root / "site"
        self.bookings = root / "bookings"
        for directory in (self.work, self.site):
            directory.mkdir(parents=True)
        for name, text in {**PROGRAMS, **SECTION_PROGRAMS.get(section, {})}.items():
            (self.work / name).write_text(text)
        (self.work / "test_fit.py").write_text(TESTS)
        self.env = {
            key: value for key, value in os.environ.items()
            if key not in STRIPPED and not key.startswith(("SLURM_", "TCAP_", "PYTEST_", "JUPYTER_", "OMPI_"))
        }
        self.env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            TCAP_SITE_DIR=str(self.site),
            TCAP_BOOKINGS_DIR=str(self.bookings),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )

    def readable(self, output: str) -> str:
        """Output as the README writes it: the home as ~, the site as /etc/tcap."""
        return output.replace(str(self.home), "~").replace(str(self.site), "/etc/tcap")

    def run(self, argv: list[str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=cwd or self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout, check=False,
        )

    def console(self, commands: list[Command]) -> list[tuple[int, str] | None]:
        """Run the commands in one bash (skipped ones left out): each one's
        (exit code, output with stderr), or None where skipped."""
        script = ["shopt -s expand_aliases", "exec 2>&1"]
        for index, command in enumerate(commands):
            if skip_for(command) is None:
                script += [f"echo '@@tour {index} start'", command.text, f"echo \"@@tour {index} exit $?\""]
        done = self.run(["bash", "-c", "\n".join(script) + "\n"], cwd=REPO if _in_repo(commands) else None)
        results: list[tuple[int, str] | None] = [None] * len(commands)
        for match in re.finditer(r"@@tour (\d+) start\n(.*?)@@tour \1 exit (\d+)\n", done.stdout, re.DOTALL):
            results[int(match[1])] = (int(match[3]), self.readable(match[2]))
        for index, command in enumerate(commands):
            if skip_for(command) is None and results[index] is None:
                results[index] = (-1, f"(the block stopped before it ended)\n{done.stdout[-2000:]}")
        return results


def _in_repo(commands: list[Command]) -> bool:
    """``make`` targets run in the checkout; everything else in the work directory."""
    return any(command.bare.startswith("make ") for command in commands)


def problems(commands: list[Command], results: list[tuple[int, str] | None]) -> list[str]:
    """What differs between the README's commands and their real runs."""
    found = []
    for command, result in zip(commands, results):
        if result is None:
            continue
        code, output = result
        if code not in expected_exits(command):
            found.append(f"README line {command.line}: `{command.bare}` exited {code}:\n{output[-3000:]}")
        elif command.shown:
            missing = mismatches(command.shown, output)
            if missing:
                found.append(
                    f"README line {command.line}: `{command.bare}` printed no line like:\n  "
                    + "\n  ".join(missing) + f"\nit printed:\n{output[-6000:]}"
                )
    return found


# --- the README's own tour ---------------------------------------------------------

TOUR = blocks(README.read_text())


def _id(block: Block) -> str:
    return f"{re.sub(r'[^a-z0-9]+', '-', block.section.lower()).strip('-')}-line{block.line}"


@pytest.mark.parametrize("block", [b for b in TOUR if b.lang == "console"], ids=_id)
def test_console_block_runs_as_shown(tmp_path: Path, block: Block) -> None:
    commands = block.commands()
    assert commands, f"README line {block.line}: a console block with no $ command"
    tour = Tour(tmp_path, block.section)
    results = tour.console(commands)
    assert problems(commands, results) == []
    if all(result is None for result in results):
        pytest.skip("; ".join(sorted({skip.reason for c in commands if (skip := skip_for(c))})))
    for command, result in zip(commands, results):
        named = re.search(r'"(Python \d[^"]*\(tcap: [^"]*\))"', command.text)
        if named and result is not None:  # the kernel's display name, as the comment quotes it
            specs = list((tour.home / ".local" / "share" / "jupyter" / "kernels").glob("*/kernel.json"))
            spec = specs[0] if specs else None
            if spec is None:  # removed later in the block: install it again to read it
                again = tour.run(["bash", "-c", command.bare])
                assert again.returncode == 0, again.stdout
                spec = next((tour.home / ".local" / "share" / "jupyter" / "kernels").glob("*/kernel.json"))
            display = json.loads(spec.read_text())["display_name"]
            assert pattern(named[1]).match(normal(display)), (named[1], display)


@pytest.mark.parametrize("block", [b for b in TOUR if b.lang == "python"], ids=_id)
def test_python_block_runs_and_does_what_it_says(tmp_path: Path, block: Block) -> None:
    tour = Tour(tmp_path, block.section)
    after = AFTER_APPLY if "tcap.apply(" in block.text else AFTER_LIMITS if "tcap.limits(" in block.text else ""
    script = tour.work / "snippet.py"
    script.write_text("import os\n" + block.text + after)
    done = tour.run([sys.executable, str(script)])
    assert done.returncode == 0, f"README line {block.line}:\n{done.stdout}"
    if after:
        assert "checked:" in done.stdout


@pytest.mark.parametrize("block", [b for b in TOUR if b.lang == "ipython"], ids=_id)
def test_ipython_block_applies_in_a_python_tcap_did_not_start(tmp_path: Path, block: Block) -> None:
    tour = Tour(tmp_path, block.section)
    cells = tour.work / "cells.ipy"
    # Then what the prose promises: pools imported afterwards at the plan's caps, %tcap's table.
    cells.write_text(block.text + "import numpy as np\nnp.ones((50, 50)) @ np.ones((50, 50))\n%tcap\n")
    done = tour.run([str(BIN / "ipython"), "--quick", "--no-banner", "--colors=NoColor", str(cells)])
    assert done.returncode == 0 and "Error" not in done.stdout, done.stdout
    profile = re.search(r"%tcap apply (\S+)", block.text)
    assert profile, block.text
    assert f"applied profile {profile[1]}" in done.stdout, done.stdout
    assert re.search(r"^openblas\s+blas\s+1\s+1\s+ok$", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.parametrize("block", [b for b in TOUR if b.lang == "toml"], ids=_id)
def test_toml_block_is_a_profile_tcap_reads(tmp_path: Path, block: Block) -> None:
    where = re.findall(r"`(~/[^`]+\.toml)`", block.before)
    assert where, f"README line {block.line}: no ~/... .toml path before the block"
    tour = Tour(tmp_path, block.section)
    path = tour.home / where[-1][2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)
    # --cpus all: the profile's cpus may ask for more CPUs than this machine has.
    done = tour.run([str(BIN / "tcap"), "show", "-p", path.stem, "--cpus", "all"])
    assert done.returncode == 0, done.stdout
    for key, value in re.findall(r'^([A-Z_]+) = "([^"]*)"', block.text, re.MULTILINE):
        assert re.search(rf"^{key}\s+{re.escape(value)}\s", done.stdout, re.MULTILINE), (key, done.stdout)


def test_the_tour_has_every_kind_of_block() -> None:
    kinds = {block.lang for block in TOUR}
    assert {"console", "python", "ipython", "toml"} <= kinds, kinds
    sections = {block.section for block in TOUR}
    assert {"Try it", "A 60-second tour", "Jupyter", "Tuning: tcap sweep"} <= sections, sections


def test_every_skip_and_exit_entry_names_a_readme_command() -> None:
    commands = [command.bare for block in TOUR if block.lang == "console" for command in block.commands()]
    for start in [*SKIPPED, *EXITS]:
        assert any(command.startswith(start) for command in commands), f"{start!r} is in no README command"


# --- the extractor and comparer catch a wrong README -------------------------------

FAKE = """\
# tool

## Try it

```console
$ tcap profiles            # the profiles
search path:
...
serial    built-in          One thread per pool, for programs that run many copies of themselves ...
$ tcap show -p serial | head -3
cpus      2  (2 CPUs in the set 0-1)
```

Your own profile, `~/.config/tcap/profiles/x.toml`:

```toml
threads = 1
```

## Documentation

```console
$ not-a-command
```
"""


def test_extractor_reads_sections_commands_comments_and_output() -> None:
    found = blocks(FAKE)
    assert [(b.section, b.lang) for b in found] == [("Try it", "console"), ("Try it", "toml")]
    first, second = found[0].commands()
    assert first.bare == "tcap profiles" and first.line == 6
    assert first.shown[0] == "search path:" and first.shown[-1].startswith("serial")
    assert second.bare == "tcap show -p serial | head -3" and second.shown == ["cpus      2  (2 CPUs in the set 0-1)"]
    assert "`~/.config/tcap/profiles/x.toml`" in found[1].before


def test_comparer_normalises_the_machine_but_not_the_words() -> None:
    real = "cpus      64  (64 CPUs in the set 0-63)\nprofile x\n"
    assert mismatches(["cpus 2  (2 CPUs in the set 0-1)"], real) == []
    assert mismatches(["cpus 2  (2 CPU in the set 0-1)"], real) == ["cpus 2  (2 CPU in the set 0-1)"]
    assert mismatches(["profile ...", "..."], real) == []
    # Each real line answers one shown line only.
    assert mismatches(["profile x", "profile x"], real) == ["profile x"]


def test_a_wrong_command_and_a_wrong_sample_are_caught(tmp_path: Path) -> None:
    wrong = FAKE.replace("$ tcap show -p serial | head -3", "$ tcap shwo -p serial").replace(
        "One thread per pool", "Two threads per pool")
    commands = blocks(wrong)[0].commands()
    results = Tour(tmp_path).console(commands)
    found = problems(commands, results)
    assert len(found) == 2, found
    assert "`tcap profiles` printed no line like:\n  serial    built-in          Two threads" in found[0]
    assert "`tcap shwo -p serial` exited 2" in found[1]
    # The same block as written is true.
    right = blocks(FAKE)[0].commands()
    assert problems(right, Tour(tmp_path / "again").console(right)) == []
