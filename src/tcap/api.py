"""tcap inside a running Python: ``tcap.apply`` and ``tcap.limits``.

``tcap run`` owns the start of a program; in a process tcap did not start
(a notebook kernel someone else runs, a test session, a script that cannot
change how it is launched) ``apply`` makes the same plan and applies what
can still be applied: the variables (for the libraries not loaded yet and
every process started afterwards), the size of each pool already loaded,
the CPU affinity of every thread, and the probe, started in-process.  What
a running process cannot change any more is returned, with what to do
instead (docs/api.md, "What apply cannot do").

``limits`` is the block-sized version, on threadpoolctl's model: the loaded
pools at a plan's caps for the length of a ``with`` block (or a decorated
call), then back to what they were.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import ContextDecorator
from dataclasses import dataclass, field
from functools import partial

from tcap.errors import TcapError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import ModuleType, TracebackType
    from typing import Any

    from tcap.plan import Plan

Count = int | str | None

#: What to do, per library, about a pool a running process cannot resize.
RESTART = ("restart the kernel (or the program) under tcap - `tcap kernel install -p {profile}` for a notebook, "
           "`tcap run -p {profile} -- ...` for a program - or call tcap.apply before importing {module}")
HINTS = {
    "numba": "; numba.set_num_threads(n) lowers what each parallel region uses, on the calling thread",
    "tokenizers (rayon)": "; TOKENIZERS_PARALLELISM=false (read at every call) keeps tokenizers on the calling "
                          "thread",
}
#: What is fixed, where it is not "since import".
WHAT = {
    "tokenizers (rayon)": "rayon's pool is sized once, when it first runs: {before} threads if it has run, "
                          "RAYON_NUM_THREADS={cap} if it has not",
    "tensorflow (intra-op)": "its pool is fixed at {before} once TensorFlow has started",
    "tensorflow (inter-op)": "its pool is fixed at {before} once TensorFlow has started",
}


def registry_reads() -> dict[str, object]:
    """The registry's pools of the loaded libraries, read now (an exception
    where the library's API failed)."""
    found: dict[str, object] = {}
    for row in _pools_module().loaded(sys.modules):
        try:
            found[row.name] = row.read(sys.modules[row.module])
        except Exception as error:
            found[row.name] = error
    return found


@dataclass(frozen=True)
class PoolChange:
    """One loaded pool apply (or limits) set: its size before and after."""

    library: str
    api: str
    before: int
    after: int
    cap: int | None


@dataclass(frozen=True)
class Cannot:
    """Something this process cannot change any more, and what to do instead."""

    library: str
    what: str
    instead: str


@dataclass(frozen=True)
class Applied:
    """What ``tcap.apply`` did to this process."""

    profile: str
    caps: dict[str, int]
    cpus: int
    pinned: tuple[int, ...] | None
    verify: str
    share: str
    #: Variables set in os.environ (None: unset), for libraries loaded later and new processes.
    variables: dict[str, str | None] = field(default_factory=dict)
    pools: tuple[PoolChange, ...] = ()
    cannot: tuple[Cannot, ...] = ()
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        from tcap.cpuset import format_cpu_list
        from tcap.kernel import caps_words
        from tcap.plural import counted

        lines = [f"tcap: applied profile {self.profile} to pid {os.getpid()}: "
                 f"{caps_words(self.caps.get('blas', 0), self.caps.get('openmp', 0))}, verify {self.verify}, share "
                 f"{self.share}, " + (f"pinned to CPUs {format_cpu_list(self.pinned)}" if self.pinned is not None
                                      else counted(self.cpus, "CPU"))]
        shown = {name: value for name, value in self.variables.items() if not name.startswith("TCAP_")
                 and name != "PYTHONPATH"}
        if shown:  # grouped by value: the plan sets most of them to the same count
            groups: dict[str | None, list[str]] = {}
            for name, value in shown.items():
                groups.setdefault(value, []).append(name)
            lines.append("  variables, for libraries loaded from now on and new processes: " + "; ".join(
                (f"set to {value}: " if value is not None else "unset: ") + ", ".join(names)
                for value, names in groups.items()))
        if self.verify != "off":
            lines.append("  verification: the probe runs in this process and in the processes it starts")
        for pool in self.pools:
            change = f"{pool.before} -> {pool.after}" if pool.before != pool.after else f"{pool.after} (unchanged)"
            lines.append(f"  {pool.library} ({pool.api}): {change} threads"
                         + (f", cap {pool.cap}" if pool.cap is not None else ""))
        for item in self.cannot:
            lines.append(f"  cannot: {item.library}: {item.what}; {item.instead}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython shows the text, not the fields
        printer.text(str(self))


def options_of(profile: str | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """The CLI's option dict (tcap.grammar's names) for a profile and flags."""
    options: dict[str, Any] = {"set": []}
    if profile is not None:
        if not isinstance(profile, str | os.PathLike):
            raise TcapError(f"profile: expected a profile name or a path, not {type(profile).__name__}")
        options["profile"] = os.fspath(profile)
    for name, value in flags.items():
        if value is None:
            continue
        if name == "set":
            items = [f"{k}={v}" for k, v in value.items()] if hasattr(value, "items") else value
            if isinstance(items, str) or not all(isinstance(item, str) for item in items):
                raise TcapError("set: expected a mapping of variable names to values, or 'VAR=VALUE' strings")
            options["set"] = list(items)
        elif isinstance(value, bool) or not isinstance(value, int | str):
            raise TcapError(f"{name}: expected a count or an expression, not {value!r}")
        else:
            options[name] = str(value)
    return options


def _plan(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Plan:
    from tcap.recipe import build_plan

    return build_plan({**options, "python": sys.executable}, os.environ if environ is None else environ)[0]


def _numeric_loaded() -> bool:
    return bool(probe_module()._numeric_loaded())


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _pools_module() -> ModuleType:
    from tcap import _pools

    return _pools


class _Setting:
    """The loaded pools set to a plan's caps, with what it takes to undo it."""

    def __init__(self, caps: Mapping[str, int], profile: str, read: Mapping[str, object] | None = None,
                 other_threads: bool = True) -> None:
        #: The registry's sizes read before apply set the variables (some are
        #: read from them: rayon's, until its pool runs).
        self.read = read or {}
        self.changes: list[PoolChange] = []
        self.cannot: list[Cannot] = []
        self.undo: list[Callable[[], None]] = []
        self.explained: list[tuple[tuple[str | None, str], int]] = []  # over their caps, and said so here
        self.other_threads = other_threads  # apply looks at what other threads get; a limits block does not
        if not _numeric_loaded():
            return  # no library loaded: no pool to set, and nothing imported for it
        self._threadpoolctl(caps)
        self._registry(caps, profile)

    def _threadpoolctl(self, caps: Mapping[str, int]) -> None:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

        cap_for = probe_module().cap_for
        for lib in ThreadpoolController().lib_controllers:
            info = lib.info()
            cap = cap_for(info, caps)
            if cap is None:
                continue
            before = lib.get_num_threads()
            if before != cap:
                lib.set_num_threads(cap)
                self.undo.append(partial(lib.set_num_threads, before))
            self.changes.append(PoolChange(lib.internal_api, lib.user_api, before, lib.get_num_threads(), cap))
            if lib.user_api == "openmp" and self.other_threads:
                self._other_threads(lib, cap)

    def _other_threads(self, lib: Any, cap: int) -> None:
        """OpenMP keeps its size per thread: what a thread started from now
        on (a ThreadPool's, joblib's threading backend) gets is the runtime's
        start-up default, which no API changes.  Read on a new thread."""
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(lib.get_num_threads()), name="tcap-apply")
        thread.start()
        thread.join()
        if not _on_main_thread():
            self.cannot.append(Cannot(lib.internal_api, "set on this thread only: OpenMP keeps its size per thread, "
                                      "and this is not the main thread", "call tcap.apply from the main thread"))
        if seen and seen[0] > cap:
            where = "other threads" if _on_main_thread() else "the main thread and other threads"
            self.cannot.append(Cannot(
                lib.internal_api, f"OpenMP's size is kept per thread: set on this one; {where} start at its "
                f"load-time default of {seen[0]}",
                f"call threadpoolctl.threadpool_limits({cap}) inside those threads, or start the program under tcap "
                "so OMP_NUM_THREADS is set before OpenMP loads"))

    def _registry(self, caps: Mapping[str, int], profile: str) -> None:
        pools = _pools_module()
        for row in pools.loaded(sys.modules):
            module = sys.modules.get(row.module)
            cap = caps.get(row.key) if row.key is not None else None
            if module is None or cap is None:
                continue
            try:
                before = self.read[row.name] if row.name in self.read else row.read(module)
                if isinstance(before, BaseException):
                    raise before
            except Exception as error:  # the library's own API failed: say so, change nothing
                self.cannot.append(Cannot(row.name, f"its size cannot be read ({type(error).__name__}: {error})",
                                          "check it with the library's own API"))
                continue
            if not isinstance(before, int) or before == cap:
                if isinstance(before, int):
                    self.changes.append(PoolChange(row.name, row.key, before, before, cap))
                continue
            if row.per_thread and not _on_main_thread():
                self.cannot.append(Cannot(row.name, "its size is kept per thread, and this is not the main thread",
                                          "call tcap.apply from the main thread"))
            if row.limit is None:
                if before > cap:
                    what = WHAT.get(row.name, "its pool is fixed at {before} since import")
                    self.cannot.append(Cannot(row.name, what.format(before=before, cap=cap),
                                              RESTART.format(profile=profile, module=row.module)
                                              + HINTS.get(row.name, "")))
                    self.explained.append(((getattr(module, "__file__", None), row.name), before))
                continue
            try:
                row.limit(module, cap)
                after = row.read(module)
            except Exception as error:
                self.cannot.append(Cannot(row.name, f"setting it failed ({type(error).__name__}: {error})",
                                          RESTART.format(profile=profile, module=row.module)))
                continue
            self.undo.append(partial(row.limit, module, before))
            self.changes.append(PoolChange(row.name, row.key, before, after, cap))
        for item in pools.OBSERVED:
            if item.module in sys.modules:
                self.cannot.append(Cannot(item.name, "no API sizes its pools from outside",
                                          f"{item.why}; tcap watches its busy threads"))

    def restore(self) -> None:
        for undo in reversed(self.undo):
            try:
                undo()
            except Exception:  # a library that went away meanwhile: the others are still restored
                pass
        self.undo.clear()


#: What each variable apply changed was before the first apply: the next
#: apply plans from these, not from what the last one set (an inherited
#: OMP_NUM_THREADS=1 is the user's choice; one tcap set is not).
_ORIGINAL: dict[str, str | None] = {}


_ORIGINAL_CPUS: list[set[int]] = []  # the affinity before the first apply that pinned


def _as_before_apply(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    for name, value in _ORIGINAL.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _set_environ(wanted: Mapping[str, str], remember: bool = False) -> dict[str, str | None]:
    """os.environ made equal to ``wanted``; the changes (None: unset)."""
    changed: dict[str, str | None] = {}
    for name in sorted(set(os.environ) | set(wanted)):
        value = wanted.get(name)
        if os.environ.get(name) == value:
            continue
        if remember:
            _ORIGINAL.setdefault(name, os.environ.get(name))
        changed[name] = value
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value
    return changed


def _without_probe(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without an earlier launch's probe (its variables, its
    bootstrap on PYTHONPATH): for a plan whose verification is off."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
    env = {name: value for name, value in environ.items() if not name.startswith("TCAP_") or name in (
        "TCAP_DEBUG", "TCAP_BOOKINGS_DIR", "TCAP_REPORT_DIR")}
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and os.path.abspath(p) != here]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env


def _pin_threads(cpus: Iterable[int]) -> None:
    """Every thread of this process on ``cpus`` (the affinity is per thread:
    pools started before apply keep theirs otherwise)."""
    from tcap.launch import set_affinity

    cpus = sorted(cpus)
    set_affinity(cpus)
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tids:
        try:
            set_affinity(cpus, tid)  # where the interpreter lacks os.sched_setaffinity (PyPy) too
        except OSError:
            pass  # the thread ended meanwhile


def probe_module() -> ModuleType:
    """The probe of this process: the one tcap's bootstrap loaded (a launch
    by tcap), else tcap's probe.py loaded the same way, under the same name."""
    module = sys.modules.get("_tcap_probe")
    if module is not None:
        return module
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("_tcap_probe", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                               "probe.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    sys.modules["_tcap_probe"] = module
    spec.loader.exec_module(module)
    return module


def _ipython() -> Any:
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython

        return get_ipython()
    except Exception:
        return None


def apply(profile: str | None = None, *, threads: Count = None, blas: Count = None, openmp: Count = None,
          workers: Count = None, cpus: Count = None, set: Mapping[str, str] | Iterable[str] | None = None,
          verify: str | None = None, share: str | None = None) -> Applied:
    """Apply ``tcap run``'s plan for ``profile`` and the flags to this process.

    Raises TcapError (nothing changed) when the profile, the flags or the
    site policy are wrong, or when the CPUs cannot be booked or pinned."""
    from tcap.launch import child_environ, pin
    from tcap.recipe import recipe_of

    options = options_of(profile, {"threads": threads, "blas": blas, "openmp": openmp, "workers": workers,
                                   "cpus": cpus, "set": set, "verify": verify, "share": share})
    environ = _as_before_apply(os.environ)
    now = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    restored = bool(_ORIGINAL_CPUS) and now is not None and now != _ORIGINAL_CPUS[0]
    try:
        if restored:
            _pin_threads(_ORIGINAL_CPUS[0])  # planned on the CPUs the process had before the first apply
        plan = _plan(options, environ)
        notes = list(plan.launch_notes)
        recipe = recipe_of(plan, environ)
        base = _without_probe(environ) if plan.verify == "off" else environ
        wanted = child_environ(recipe, base)
        cpu_list = pin(recipe, os.environ, wanted)  # books auto:N CPUs (TCAP_CPUS in wanted), pins this thread
    except BaseException:
        if restored and now is not None:
            _pin_threads(now)  # nothing half-done
        raise
    mode = plan.verify
    if mode == "strict":
        notes.append("verify strict needs tcap to supervise the program; in a running process it runs as warn")
        wanted["TCAP_VERIFY"] = mode = "warn"
    if cpu_list is not None:
        if not _ORIGINAL_CPUS and now is not None:
            _ORIGINAL_CPUS.append(now)
        _pin_threads(cpu_list)
    read = registry_reads() if _numeric_loaded() else {}
    variables = _set_environ(wanted, remember=True)
    setting = _Setting(plan.caps, plan.profile, read)
    if mode != "off":
        probe = probe_module()
        probe.configure(main=threading.main_thread().ident, explained=setting.explained)
        shell = _ipython()
        if shell is not None:
            probe.load_ipython_extension(shell)
    elif "_tcap_probe" in sys.modules:
        sys.modules["_tcap_probe"].configure(main=threading.main_thread().ident)  # TCAP_VERIFY is gone: it stops
    return Applied(
        profile=plan.profile, caps=dict(plan.caps), cpus=plan.cpus,
        pinned=None if cpu_list is None else tuple(sorted(cpu_list)), verify=mode, share=plan.share,
        variables=variables, pools=tuple(setting.changes), cannot=tuple(setting.cannot), notes=tuple(notes))


class limits(ContextDecorator):
    """The loaded pools at ``profile``'s caps (with the flags) for a block:

        with tcap.limits("serial"):
            model.fit(X)

    or ``@tcap.limits(threads=1)`` on a function.  The plan is resolved when
    ``limits`` is made (a bad profile fails there); entering sets every
    loaded pool to its cap (OpenMP on the calling thread, as
    threadpoolctl's ``threadpool_limits``) and the plan's thread variables
    (processes started inside the block inherit them); leaving restores
    both.  Pools of libraries first loaded inside the block keep the block's
    sizes.  With the probe running, its caps are the block's meanwhile."""

    def __init__(self, profile: str | None = None, *, threads: Count = None, blas: Count = None,
                 openmp: Count = None, workers: Count = None, cpus: Count = None,
                 set: Mapping[str, str] | Iterable[str] | None = None) -> None:
        options = options_of(profile, {"threads": threads, "blas": blas, "openmp": openmp, "workers": workers,
                                       "cpus": cpus, "set": set})
        self.plan = _plan(options, _as_before_apply(os.environ))  # what apply set is not an inherited choice
        self._stack: list[tuple[_Setting, dict[str, str | None], Any]] = []

    @property
    def caps(self) -> dict[str, int]:
        return dict(self.plan.caps)

    def __enter__(self) -> limits:
        from tcap.recipe import THREAD_VARIABLES

        before = {change.name: os.environ.get(change.name) for change in self.plan.env
                  if change.name in THREAD_VARIABLES}
        wanted = dict(os.environ)
        for change in self.plan.env:
            if change.name in THREAD_VARIABLES:
                if change.value is None:
                    wanted.pop(change.name, None)
                else:
                    wanted[change.name] = change.value
        _set_environ(wanted)
        probe = sys.modules.get("_tcap_probe")
        caps = None
        if probe is not None and getattr(probe, "_state", {}).get("mode"):
            caps = probe._state.get("caps")
            probe._state["caps"] = {**self.plan.caps}
        setting = _Setting(self.plan.caps, self.plan.profile, other_threads=False)
        self._stack.append((setting, before, caps))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        setting, before, caps = self._stack.pop()
        setting.restore()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        probe = sys.modules.get("_tcap_probe")
        if caps is not None and probe is not None:
            probe._state["caps"] = caps

    @property
    def changes(self) -> tuple[PoolChange, ...]:
        """The pools the innermost active block set."""
        return tuple(self._stack[-1][0].changes) if self._stack else ()


def magic_apply(line: str) -> Applied | None:
    """``%tcap apply [PROFILE] [plan flags]``: tcap.apply from IPython,
    flags as ``tcap run`` spells them; errors print one line."""
    import shlex

    from tcap.grammar import PLAN_OPTIONS, is_option

    try:
        words = shlex.split(line)
    except ValueError as error:
        print(f"tcap: error: %tcap apply: {error}")
        return None
    options: dict[str, Any] = {"set": []}
    try:
        index = 0
        while index < len(words):
            word = words[index]
            option, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
            if not word.startswith("-"):
                if "profile" in options:
                    raise TcapError(f"%tcap apply: unexpected argument {word!r} (one profile)")
                options["profile"] = word
            elif option in PLAN_OPTIONS:
                if not eq:
                    index += 1
                    if index >= len(words) or is_option(words[index], PLAN_OPTIONS):
                        raise TcapError(f"%tcap apply: {option} needs a value")
                    value = words[index]
                elif not value:
                    raise TcapError(f"%tcap apply: {option} needs a value")
                dest = PLAN_OPTIONS[option]
                if dest == "set":
                    options["set"].append(value)
                elif dest == "profile" and "profile" in options:
                    raise TcapError("%tcap apply: one profile")
                else:
                    options[dest] = value
            else:
                from tcap.profiles import did_you_mean

                raise TcapError(f"%tcap apply: unknown option {option}{did_you_mean(option, list(PLAN_OPTIONS))}")
            index += 1
        profile = options.pop("profile", None)
        applied = apply(profile, **options)
    except TcapError as error:
        from tcap.errors import one_line

        print(f"tcap: error: {one_line(str(error))}")
        return None
    print(applied)
    return applied
