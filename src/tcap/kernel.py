"""Thread-capped Jupyter kernels: ``tcap kernel install | list | remove``.

The builders are pure (``kernel_argv``, ``kernel_dict``, ``display_name``,
``default_name``); ``install``, ``list_kernels`` and ``remove`` do the I/O
and hand the copying and the search path to jupyter_client's
KernelSpecManager, so ``--user``, ``--sys-prefix`` and ``--prefix`` mean
exactly what they mean for ``ipykernel install``.

A tcap kernelspec runs ``python -m tcap run [plan flags] --kernel --
PYTHON -m ipykernel_launcher -f {connection_file}``: tcap execs the kernel,
so the kernel keeps the pid Jupyter started and interrupt, restart and
shutdown behave as with a plain kernel. By default the profile is read
again at every kernel start; ``--freeze`` stores the resolved recipe in the
spec directory (``tcap-plan.json``) and the argv points ``tcap run --plan``
at it through Jupyter's ``{resource_dir}``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from tcap.errors import EXIT_IO, TcapError
from tcap.recipe import plan_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from tcap.plan import Plan

#: What Jupyter accepts as a kernel name (jupyter_client lowercases it);
#: ``\Z``: ``$`` would also let a final newline through.
NAME = re.compile(r"^[a-z0-9._-]+\Z")
#: The most tcap reads of a kernel.json or a frozen plan (both are a few KiB).
MAX_SPEC_FILE = 1 << 20
#: Modes of what tcap installs, whatever the umask (ipykernel's, under the
#: usual umask): Jupyter of every user the location serves must read it.
DIR_MODE, FILE_MODE = 0o755, 0o644
#: The file a frozen spec keeps its recipe in.
FROZEN = "tcap-plan.json"
#: Files of ipykernel's own spec copied for the launcher's icons.
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")


def default_name(profile: str) -> str:
    """``tcap-<profile>``, made a valid kernel name (a path gives its stem)."""
    stem = os.path.basename(profile)
    if stem.endswith(".toml"):
        stem = stem[: -len(".toml")]
    return "tcap-" + (re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "profile")


def check_name(name: str) -> str:
    """The kernel name as Jupyter stores it (lowercase); a usage error if invalid."""
    # "." and ".." match Jupyter's pattern but name the kernels directory
    # itself or its parent, which --force would delete.
    if not NAME.match(name.lower()) or not name.strip("."):
        raise TcapError(
            f"invalid kernel name {name!r}: Jupyter allows only letters, digits, '.', '_' and '-'"
        )
    return name.lower()


def caps_text(plan: Plan) -> str:
    return caps_words(plan.caps["blas"], plan.caps["openmp"])


def caps_words(blas: int, openmp: int) -> str:
    """The caps in a few words: ``8 threads`` or ``blas 1, openmp 4``."""
    if blas == openmp:
        return f"{blas} thread" + ("" if blas == 1 else "s")
    return f"blas {blas}, openmp {openmp}"


def display_name(plan: Plan, version: str) -> str:
    return f"Python {version} (tcap: {plan.profile}, {caps_text(plan)})"


def kernel_argv(tcap_python: str, python: str, flags: Sequence[str], frozen: bool) -> list[str]:
    """The kernelspec argv: tcap in front of ipykernel, exec-ing it."""
    plan = ["--plan", "{resource_dir}/" + FROZEN] if frozen else list(flags)
    return [
        tcap_python, "-m", "tcap", "run", *plan, "--kernel", "--",
        python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
    ]


def kernel_dict(argv: Sequence[str], display: str, tcap_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The kernel.json contents."""
    return {
        "argv": list(argv),
        "display_name": display,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True, "tcap": dict(tcap_meta)},
    }


def _spec_manager() -> Any:
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise TcapError(
            "tcap kernel needs jupyter_client: pip install 'tcap[jupyter]' (or jupyter_client) next to tcap"
        ) from None
    return KernelSpecManager()


def python_facts(python: str) -> tuple[str, str]:
    """(absolute path, "major.minor") of ``python``; a usage error when it is
    missing or lacks ipykernel."""
    found = shutil.which(python) if "/" not in python else python
    if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise TcapError(f"--python {python}: no such executable")
    found = os.path.abspath(found)
    probe = (
        "import sys, importlib.util; "
        "print('%d.%d' % sys.version_info[:2], importlib.util.find_spec('ipykernel') is not None)"
    )
    try:
        done = subprocess.run([found, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as failure:
        raise TcapError(f"--python {python}: cannot run it: {failure}") from None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2:
        raise TcapError(f"--python {python}: is it a Python interpreter? ({done.stderr.strip()[-200:]})")
    if words[1] != "True":
        raise TcapError(
            f"{found} has no ipykernel, which a Jupyter kernel needs: install it there with "
            f"'{found} -m pip install ipykernel'"
        )
    return found, words[0]


def install(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str, list[str]]:
    """Write the kernelspec; (name, destination, warnings). Nothing is
    written when the profile, the name or the interpreter is wrong."""
    from tcap.recipe import build_plan, recipe_of
    from tcap.search import DEFAULT_PROFILE, is_path

    places = [flag for flag in ("user", "sys_prefix", "prefix") if options.get(flag)]
    if len(places) > 1:
        raise TcapError("tcap kernel install: choose one of --user, --sys-prefix and --prefix")
    spec = options.get("profile") or DEFAULT_PROFILE
    if is_path(spec):
        spec = os.path.abspath(spec)
    # The kernel's interpreter decides which recorded library limits apply.
    plan = build_plan({**options, "profile": spec, "python": options.get("python") or sys.executable}, environ)[0]
    if plan.verify == "strict":
        raise TcapError(
            "verify strict needs tcap to supervise the process, but a kernel must be exec'ed (Jupyter signals "
            "and restarts the pid it started): use --verify warn or enforce for a kernel"
        )
    name = check_name(options.get("name") or default_name(plan.profile))
    python, version = python_facts(options.get("python") or sys.executable)
    manager = _spec_manager()
    prefix = sys.prefix if options.get("sys_prefix") else options.get("prefix")
    destination = manager._get_destination_dir(name, user=bool(options.get("user")), prefix=prefix)
    if os.path.lexists(destination) and not options.get("force"):
        raise TcapError(f"kernel {name!r} already exists in {destination}: use --force to replace it")

    frozen = bool(options.get("freeze"))
    flags = plan_flags({**options, "profile": spec})
    meta = {
        "made_by": "tcap",
        "profile": spec,
        "flags": flags,
        "frozen": frozen,
        "python": python,
        "tcap_python": sys.executable,
    }
    argv = kernel_argv(sys.executable, python, flags, frozen)
    display = options.get("display_name") or display_name(plan, version)
    warnings = []
    files = {"kernel.json": json.dumps(kernel_dict(argv, display, meta), indent=1).encode()}
    if frozen:
        files[FROZEN] = json.dumps({"recipe": recipe_of(plan), "plan": plan.to_data()}, indent=1).encode()
    files.update(_logos())
    try:
        write_spec(destination, files)
    except OSError as failure:
        hint = "" if places else " (use --user, --sys-prefix or --prefix DIR)"
        raise TcapError(
            f"cannot install kernel {name!r} into {failure.filename or destination}: "
            f"{failure.strerror or failure}{hint}",
            code=EXIT_IO,
        ) from None
    if os.path.dirname(destination) not in manager.kernel_dirs:
        warnings.append(
            f"{os.path.dirname(destination)} is not on Jupyter's kernel search path, so Jupyter will not "
            "find this kernel: add its share/jupyter directory to JUPYTER_PATH"
        )
    return name, destination, warnings


def _logos() -> dict[str, bytes]:
    """ipykernel's icons, for Jupyter's launcher (none when it has none)."""
    from importlib.util import find_spec

    from tcap import safefile

    found = find_spec("ipykernel")
    if found is None or not found.submodule_search_locations:
        return {}
    resources = os.path.join(list(found.submodule_search_locations)[0], "resources")
    logos = {}
    for logo in LOGOS:
        try:
            logos[logo] = safefile.read(os.path.join(resources, logo), MAX_SPEC_FILE)
        except OSError:
            continue
    return logos


def write_spec(destination: str, files: Mapping[str, bytes]) -> None:
    """Make the kernelspec directory ``destination`` hold ``files`` (names to
    contents), whole or not at all: they are written into a new directory
    beside it (each file through safefile.write_atomic, so a full disk
    fails before anything is in place), which is then renamed over the old
    spec. Directories are 0755 and files 0644 whatever the umask, as
    ipykernel makes them under the usual one: a spec root installs for
    everyone must be readable by everyone. Raises OSError."""
    from tcap import safefile

    parent = os.path.dirname(destination)
    _make_dirs(parent)
    # '~' is not in Jupyter's kernel names: a directory left by a crash is never listed as a kernel.
    staging = tempfile.mkdtemp(prefix=".tcap~new~", dir=parent)
    old = None
    try:
        os.chmod(staging, DIR_MODE)
        for filename, data in files.items():
            safefile.write_atomic(os.path.join(staging, filename), data, FILE_MODE)
        if os.path.lexists(destination):
            old = tempfile.mkdtemp(prefix=".tcap~old~", dir=parent)
            os.rename(destination, os.path.join(old, "spec"))
        try:
            os.rename(staging, destination)
        except OSError:
            if old is not None:
                os.rename(os.path.join(old, "spec"), destination)
                _drop(old)
                old = None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            _drop(old)


def _drop(directory: str) -> None:
    moved = os.path.join(directory, "spec")
    if os.path.islink(moved):
        os.unlink(moved)
    shutil.rmtree(directory, ignore_errors=True)


def _make_dirs(path: str) -> None:
    """``path`` and its missing parents, each made DIR_MODE (not the umask's)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        up = os.path.dirname(path)
        if up == path:
            break
        path = up
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)


def _tcap_meta(data: Any) -> dict[str, Any] | None:
    """The ``metadata.tcap`` table of a kernel.json's data, when tcap made it."""
    metadata = data.get("metadata") if isinstance(data, dict) else None
    meta = metadata.get("tcap") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) and meta.get("made_by") == "tcap" else None


def read_spec(directory: str) -> Any:
    """The data of ``directory``'s kernel.json, read through safefile (no
    FIFO, no device, at most MAX_SPEC_FILE bytes); OSError or ValueError,
    whose ``ours`` says whether the file looks like one tcap made."""
    from tcap import safefile

    raw = safefile.read(os.path.join(directory, "kernel.json"), MAX_SPEC_FILE)
    try:
        return safefile.load_json(raw)
    except ValueError as failure:
        failure.ours = b'"made_by": "tcap"' in raw  # type: ignore[attr-defined]
        raise


def _problem(failure: Exception) -> str:
    if isinstance(failure, OSError):
        return str(failure.strerror or failure)
    return str(failure)


def _frozen_summary(directory: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(caps, cpus, verify) of a frozen spec's tcap-plan.json, and what is wrong with it."""
    from tcap import safefile
    from tcap.plan import Plan

    try:
        frozen = safefile.read_json(os.path.join(directory, FROZEN), MAX_SPEC_FILE)
        if not isinstance(frozen, dict) or not isinstance(frozen.get("plan"), dict) \
                or not isinstance(frozen.get("recipe"), dict):
            raise ValueError("not a tcap frozen plan")
        plan = Plan.from_data(frozen["plan"])
        summary = _summary(plan.caps, plan.cpus, plan.verify)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as failure:
        return None, [f"frozen plan unreadable: {_problem(failure)}"]
    if summary is None:
        return None, ["frozen plan unreadable: its caps, cpus or verify are not of the right type"]
    bootstrap = frozen["recipe"].get("bootstrap")
    if bootstrap and (not isinstance(bootstrap, str) or not os.path.isdir(bootstrap)):
        return summary, [f"frozen plan: the probe's files are gone ({bootstrap}): install it again"]
    return summary, []


def _summary(caps: Any, cpus: Any, verify: Any) -> dict[str, Any] | None:
    if not isinstance(caps, dict) or not all(isinstance(caps.get(k), int) for k in ("blas", "openmp")):
        return None
    if not isinstance(cpus, int) or not isinstance(verify, str):
        return None
    return {"caps": {k: caps[k] for k in ("blas", "openmp")}, "cpus": cpus, "verify": verify}


def list_kernels(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every tcap-made kernelspec Jupyter can find, with its caps (the plan
    it would start with now) and what makes it stale, if anything.

    Every kernel.json and tcap-plan.json is read through safefile and
    checked field by field: a malformed, huge or planted one is listed as
    stale with the reason (when it looks like tcap's) or skipped, never an
    error of the whole listing."""
    from tcap.recipe import build_plan, parse_plan_flags

    manager = _spec_manager()
    found = []
    for name, directory in sorted(manager.find_kernel_specs().items()):
        entry: dict[str, Any] = {
            "name": name, "display_name": None, "resource_dir": directory, "profile": None, "frozen": False,
            "python": None, "caps": None, "cpus": None, "verify": None, "stale": [],
        }
        try:
            data = read_spec(directory)
        except (OSError, ValueError) as failure:
            # Not ours to judge, unless named as tcap names kernels or mentioning tcap.
            if name.startswith("tcap-") or getattr(failure, "ours", False):
                entry["stale"].append(f"kernel.json unreadable: {_problem(failure)}")
                found.append(entry)
            continue
        meta = _tcap_meta(data)
        if meta is None:
            continue
        problems: list[str] = entry["stale"]
        display = data.get("display_name")
        entry.update(display_name=display if isinstance(display, str) else None,
                     profile=meta.get("profile"), frozen=bool(meta.get("frozen")),
                     python=meta.get("python") if isinstance(meta.get("python"), str) else None)
        summary = None
        if meta.get("frozen"):
            summary, more = _frozen_summary(directory)
            problems += more
        else:
            flags = meta.get("flags", [])
            try:
                if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
                    raise TcapError("metadata.tcap.flags is not a list of flags")
                plan = build_plan(parse_plan_flags(list(flags)), environ)[0]
                summary = _summary(plan.caps, plan.cpus, plan.verify)
            except TcapError as error:
                problems.append(f"profile: {error}")
        if summary is not None:
            entry.update(summary)
        argv = data.get("argv")
        launcher = argv[0] if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) else None
        python = entry["python"]
        if not python or not os.access(python, os.X_OK):
            problems.append(f"interpreter gone: {meta.get('python')}")
        if launcher is None:
            problems.append("kernel.json: argv is not a command (a list of strings)")
        elif not os.access(launcher, os.X_OK):
            problems.append(f"tcap's interpreter gone: {launcher}")
        found.append(entry)
    return found


def remove(name: str, force: bool) -> str:
    """Remove a tcap-made kernelspec (any with ``force``); its directory.

    What cannot be removed (another user's spec, a directory this user
    cannot write) is found before anything is deleted: one line, exit 74."""
    manager = _spec_manager()
    specs = manager.find_kernel_specs()
    key = name.lower()
    if key not in specs:
        raise TcapError(f"no kernel named {name!r} (see tcap kernel list)")
    directory = specs[key]
    try:
        ours = _tcap_meta(read_spec(directory)) is not None
    except (OSError, ValueError):
        ours = False
    if not ours and not force:
        raise TcapError(f"kernel {key!r} ({directory}) was not made by tcap: use --force to remove it anyway")
    parent = os.path.dirname(directory)
    link = os.path.islink(directory)
    for where in (parent,) if link else (parent, directory):
        if not os.access(where, os.W_OK | os.X_OK):
            raise TcapError(f"cannot remove kernel {key!r} ({directory}): Permission denied: you cannot write "
                            f"{where}", code=EXIT_IO)
    try:
        if link:
            os.unlink(directory)
        else:
            shutil.rmtree(directory)
    except OSError as failure:
        raise TcapError(f"cannot remove kernel {key!r} ({directory}): {failure.strerror or failure}",
                        code=EXIT_IO) from None
    return str(directory)
