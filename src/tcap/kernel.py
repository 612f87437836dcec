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

from tcap.errors import EXIT_INTERNAL, EXIT_IO, TcapError
from tcap.recipe import plan_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from tcap.plan import Plan

#: What Jupyter accepts as a kernel name (jupyter_client lowercases it).
NAME = re.compile(r"^[a-z0-9._-]+$")
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
    if os.path.exists(destination) and not options.get("force"):
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
    with tempfile.TemporaryDirectory() as source:
        with open(os.path.join(source, "kernel.json"), "w") as f:
            json.dump(kernel_dict(argv, display, meta), f, indent=1)
        if frozen:
            with open(os.path.join(source, FROZEN), "w") as f:
                json.dump({"recipe": recipe_of(plan), "plan": plan.to_data()}, f, indent=1)
        _copy_logos(source)
        try:
            destination = manager.install_kernel_spec(
                source, name, user=bool(options.get("user")), prefix=prefix
            )
        except OSError as failure:
            hint = "" if places else " (use --user, --sys-prefix or --prefix DIR)"
            raise TcapError(
                f"cannot install kernel {name!r} into {failure.filename or destination}: "
                f"{failure.strerror}{hint}",
                code=EXIT_IO,
            ) from None
    if os.path.dirname(destination) not in manager.kernel_dirs:
        warnings.append(
            f"{os.path.dirname(destination)} is not on Jupyter's kernel search path, so Jupyter will not "
            "find this kernel: add its share/jupyter directory to JUPYTER_PATH"
        )
    return name, destination, warnings


def _copy_logos(target: str) -> None:
    from importlib.util import find_spec

    found = find_spec("ipykernel")
    if found is None or not found.submodule_search_locations:
        return
    resources = os.path.join(list(found.submodule_search_locations)[0], "resources")
    for logo in LOGOS:
        if os.path.isfile(os.path.join(resources, logo)):
            shutil.copy(os.path.join(resources, logo), target)


def _tcap_meta(spec: Any) -> dict[str, Any] | None:
    meta = (spec.metadata or {}).get("tcap")
    return meta if isinstance(meta, dict) and meta.get("made_by") == "tcap" else None


def list_kernels(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every tcap-made kernelspec Jupyter can find, with its caps (the plan
    it would start with now) and what makes it stale, if anything."""
    from tcap.plan import Plan
    from tcap.recipe import build_plan, parse_plan_flags

    manager = _spec_manager()
    found = []
    for name, directory in sorted(manager.find_kernel_specs().items()):
        try:
            spec = manager.get_kernel_spec(name)
        except Exception:  # a broken kernel.json: not ours to judge
            continue
        meta = _tcap_meta(spec)
        if meta is None:
            continue
        problems = []
        plan = None
        try:
            if meta.get("frozen"):
                with open(os.path.join(directory, FROZEN)) as f:
                    frozen = json.load(f)
                plan = Plan.from_data(frozen["plan"])
                bootstrap = frozen["recipe"].get("bootstrap")
                if bootstrap and not os.path.isdir(bootstrap):
                    problems.append(f"frozen plan: the probe's files are gone ({bootstrap}): install it again")
            else:
                options = parse_plan_flags(list(meta.get("flags", [])))
                plan = build_plan(options, environ)[0]
        except TcapError as error:
            problems.append(f"profile: {error}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"frozen plan unreadable: {error}")
        for role, path in (("interpreter", meta.get("python")), ("tcap's interpreter", spec.argv[0])):
            if not path or not os.access(path, os.X_OK):
                problems.append(f"{role} gone: {path}")
        found.append(
            {
                "name": name,
                "display_name": spec.display_name,
                "resource_dir": directory,
                "profile": meta.get("profile"),
                "frozen": bool(meta.get("frozen")),
                "python": meta.get("python"),
                "caps": None if plan is None else {k: v for k, v in plan.caps.items() if k in ("blas", "openmp")},
                "cpus": None if plan is None else plan.cpus,
                "verify": None if plan is None else plan.verify,
                "stale": problems,
            }
        )
    return found


def remove(name: str, force: bool) -> str:
    """Remove a tcap-made kernelspec (any with ``force``); its directory."""
    manager = _spec_manager()
    specs = manager.find_kernel_specs()
    key = name.lower()
    if key not in specs:
        raise TcapError(f"no kernel named {name!r} (see tcap kernel list)")
    try:
        spec = manager.get_kernel_spec(key)
        ours = _tcap_meta(spec) is not None
    except Exception:
        ours = False
    if not ours and not force:
        raise TcapError(f"kernel {key!r} ({specs[key]}) was not made by tcap: use --force to remove it anyway")
    try:
        return str(manager.remove_kernel_spec(key))
    except OSError as failure:
        raise TcapError(f"cannot remove kernel {key!r}: {failure.strerror}", code=EXIT_INTERNAL) from None
