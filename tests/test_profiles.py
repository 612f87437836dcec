"""Finding, reading and validating profiles: tcap.profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcap.errors import EXIT_USAGE, TcapError
from tcap.machine import Machine
from tcap.plan import Overrides, resolve
from tcap.profiles import list_profiles, load
from tcap.search import builtin_dir, search_path
from tcap.variables import VARIABLES

BUILTIN = Path(__file__).resolve().parent.parent / "profiles"
BUILTIN_NAMES = sorted(p.stem for p in BUILTIN.glob("*.toml"))


class Dirs:
    """A tmp search path: two TCAP_PROFILE_PATH dirs, user, site."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path1 = tmp / "p1"
        self.path2 = tmp / "p2"
        self.xdg = tmp / "xdg"
        self.user = self.xdg / "tcap" / "profiles"
        self.site_root = tmp / "site"
        self.site = self.site_root / "profiles"
        self.home = tmp / "home"
        for d in (self.path1, self.path2, self.user, self.site, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.environ = {
            "HOME": str(self.home),
            "TCAP_PROFILE_PATH": f"{self.path1}:{self.path2}",
            "XDG_CONFIG_HOME": str(self.xdg),
            "TCAP_SITE_DIR": str(self.site_root),
        }

    def write(self, directory: Path, name: str, text: str) -> Path:
        path = directory / f"{name}.toml"
        path.write_text(text)
        return path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


def values(profile) -> dict:
    return {k: s.value for k, s in profile.settings.items()}


def error_of(dirs: Dirs, text: str, name: str = "bad") -> TcapError:
    path = dirs.write(dirs.path1, name, text)
    with pytest.raises(TcapError) as info:
        load(name, dirs.environ)
    error = info.value
    assert error.path == str(path)
    assert error.code == EXIT_USAGE == 2
    return error


# --- search path --------------------------------------------------------------

def test_search_path_order(dirs):
    labels = search_path(dirs.environ)
    assert labels == [
        ("TCAP_PROFILE_PATH", str(dirs.path1)),
        ("TCAP_PROFILE_PATH", str(dirs.path2)),
        ("user", str(dirs.user)),
        ("site", str(dirs.site)),
        ("built-in", builtin_dir()),
    ]
    assert Path(builtin_dir()).resolve() == BUILTIN


def test_search_path_defaults_from_home(tmp_path):
    environ = {"HOME": str(tmp_path)}
    dirs = [d for _, d in search_path(environ)]
    assert dirs == [
        os.path.join(str(tmp_path), ".config", "tcap", "profiles"),
        os.path.join("/etc/tcap", "profiles"),
        builtin_dir(),
    ]


def test_first_directory_wins(dirs):
    dirs.write(dirs.site, "job", "threads = 3\n")
    dirs.write(dirs.user, "job", "threads = 2\n")
    assert values(load("job", dirs.environ)) == {"threads": 2}
    dirs.write(dirs.path2, "job", "threads = 5\n")
    assert values(load("job", dirs.environ)) == {"threads": 5}
    dirs.write(dirs.path1, "job", "threads = 7\n")
    profile = load("job", dirs.environ)
    assert values(profile) == {"threads": 7}
    assert profile.path == str(dirs.path1 / "job.toml")
    assert profile.name == "job"


def test_user_profile_shadows_builtin(dirs):
    dirs.write(dirs.user, "serial", "threads = 2\n")
    profile = load("serial", dirs.environ)
    assert values(profile) == {"threads": 2}


def test_missing_profile_names_the_search_path(dirs):
    with pytest.raises(TcapError) as info:
        load("nosuch", dirs.environ)
    assert "nosuch" in info.value.message
    assert str(dirs.user) in info.value.message
    assert info.value.code == 2


@pytest.mark.parametrize("name", [".hidden", "-x", "a b", "a$b"])
def test_invalid_profile_name(dirs, name):
    with pytest.raises(TcapError, match="invalid profile name"):
        load(name, dirs.environ)


def test_list_profiles_marks_shadowed(dirs):
    first = dirs.write(dirs.path1, "job", 'description = "first"\n')
    second = dirs.write(dirs.site, "job", 'description = "second"\n')
    dirs.write(dirs.user, "serial", "threads = 1\n")
    dirs.write(dirs.user, "broken", "threads = 0\n")
    listing = list_profiles(dirs.environ)
    jobs = [item for item in listing if item.name == "job"]
    assert [(j.path, j.shadowed_by, j.description) for j in jobs] == [
        (str(first), None, "first"),
        (str(second), str(first), "second"),
    ]
    serials = [item for item in listing if item.name == "serial"]
    assert serials[0].source == "user" and serials[0].shadowed_by is None
    assert serials[1].source == "built-in"
    assert serials[1].shadowed_by == str(dirs.user / "serial.toml")
    broken = next(item for item in listing if item.name == "broken")
    assert broken.error is not None and "threads" in broken.error
    assert {i.name for i in listing if i.source == "built-in"} == set(BUILTIN_NAMES)
    # Search order: TCAP_PROFILE_PATH, user, site, built-in.
    order = ["TCAP_PROFILE_PATH", "user", "site", "built-in"]
    ranks = [order.index(item.source) for item in listing]
    assert ranks == sorted(ranks)


# --- -p path ------------------------------------------------------------------

def test_load_by_path(dirs):
    path = dirs.tmp / "elsewhere" / "mine.toml"
    path.parent.mkdir()
    path.write_text('description = "mine"\nblas = 1\nworkers = "cpus / 2"\n')
    profile = load(str(path), dirs.environ)
    assert profile.name == "mine"
    assert profile.path == str(path)
    assert profile.description == "mine"
    assert values(profile) == {"blas": 1, "workers": "cpus / 2"}
    assert (str(path), profile.depends[0][1]) == profile.depends[0] and profile.depends[0][1] is not None
    assert profile.settings["blas"].origin.line == 2
    assert profile.settings["workers"].origin.line == 3


def test_load_missing_path(dirs):
    with pytest.raises(TcapError, match="not found") as info:
        load(str(dirs.tmp / "nope.toml"), dirs.environ)
    assert info.value.code == 2


def test_path_extends_relative_file(dirs):
    base = dirs.tmp / "proj"
    base.mkdir()
    (base / "base.toml").write_text("threads = 4\nblas = 2\n")
    (base / "child.toml").write_text('extends = "./base.toml"\nblas = 1\n')
    profile = load(str(base / "child.toml"), dirs.environ)
    assert values(profile) == {"threads": 4, "blas": 1}


# --- extends ------------------------------------------------------------------

def test_extends_chain_child_wins(dirs):
    dirs.write(dirs.site, "grand", 'description = "g"\nthreads = 8\nblas = 4\nopenmp = 2\ncpus = "0-3"\n')
    dirs.write(dirs.user, "parent", 'extends = "grand"\nblas = 3\nworkers = 2\n')
    dirs.write(dirs.path1, "child", 'extends = "parent"\nopenmp = 1\n')
    profile = load("child", dirs.environ)
    assert values(profile) == {"threads": 8, "blas": 3, "openmp": 1, "cpus": "0-3", "workers": 2}
    assert profile.description == "g"
    assert profile.settings["threads"].origin.source == str(dirs.site / "grand.toml")
    assert profile.settings["blas"].origin.source == str(dirs.user / "parent.toml")
    assert profile.settings["openmp"].origin.source == str(dirs.path1 / "child.toml")
    assert profile.settings["openmp"].origin.line == 2


def test_extends_list_later_parent_wins(dirs):
    dirs.write(dirs.user, "a", "threads = 1\nblas = 1\n")
    dirs.write(dirs.user, "b", "blas = 2\nopenmp = 2\n")
    dirs.write(dirs.user, "c", 'extends = ["a", "b"]\nopenmp = 3\n')
    assert values(load("c", dirs.environ)) == {"threads": 1, "blas": 2, "openmp": 3}
    dirs.write(dirs.user, "d", 'extends = ["b", "a"]\n')
    assert values(load("d", dirs.environ)) == {"threads": 1, "blas": 1, "openmp": 2}


def test_extends_own_name_reaches_shadowed_builtin(dirs):
    dirs.write(dirs.user, "serial", 'extends = "serial"\nblas = 2\n')
    profile = load("serial", dirs.environ)
    assert values(profile) == {"threads": 1, "blas": 2}
    assert profile.settings["threads"].origin.source == str(BUILTIN / "serial.toml") or \
        Path(profile.settings["threads"].origin.source).resolve() == BUILTIN / "serial.toml"
    assert profile.path == str(dirs.user / "serial.toml")


def test_extends_own_name_three_levels(dirs):
    dirs.write(dirs.path1, "serial", 'extends = "serial"\nopenmp = 3\n')
    dirs.write(dirs.site, "serial", 'extends = "serial"\nblas = 2\n')
    profile = load("serial", dirs.environ)
    assert values(profile) == {"threads": 1, "blas": 2, "openmp": 3}


def test_extends_own_name_with_nothing_below(dirs):
    path = dirs.write(dirs.user, "lonely", 'description = "x"\nextends = "lonely"\n')
    with pytest.raises(TcapError, match="further down") as info:
        load("lonely", dirs.environ)
    assert info.value.path == str(path)
    assert info.value.line == 2


def test_extends_missing_parent(dirs):
    error = error_of(dirs, '\n\nextends = ["nosuch"]\n')
    assert error.line == 3
    assert "nosuch" in error.message


def test_extends_cycle_names_the_cycle(dirs):
    dirs.write(dirs.user, "a", 'extends = "b"\n')
    dirs.write(dirs.user, "b", 'extends = "c"\n')
    dirs.write(dirs.user, "c", 'extends = "a"\n')
    with pytest.raises(TcapError) as info:
        load("a", dirs.environ)
    assert "extends cycle: a -> b -> c -> a" in info.value.message
    # The error points at the extends line that closes the cycle.
    assert info.value.path == str(dirs.user / "c.toml")
    assert info.value.line == 1
    assert info.value.code == 2


def test_extends_self_cycle_by_path(dirs):
    path = dirs.tmp / "loop.toml"
    path.write_text('extends = "./loop.toml"\n')
    with pytest.raises(TcapError, match="cycle: loop -> loop"):
        load(str(path), dirs.environ)


def test_extends_diamond_is_not_a_cycle(dirs):
    dirs.write(dirs.user, "base", "threads = 2\n")
    dirs.write(dirs.user, "left", 'extends = "base"\nblas = 1\n')
    dirs.write(dirs.user, "right", 'extends = "base"\nopenmp = 1\n')
    dirs.write(dirs.user, "top", 'extends = ["left", "right"]\n')
    assert values(load("top", dirs.environ)) == {"threads": 2, "blas": 1, "openmp": 1}


def test_depends_records_absent_candidates(dirs):
    dirs.write(dirs.site, "job", "threads = 2\n")
    profile = load("job", dirs.environ)
    paths = {p: sig for p, sig in profile.depends}
    for d in (dirs.path1, dirs.path2, dirs.user):
        assert paths[str(d / "job.toml")] is None
    assert paths[str(dirs.site / "job.toml")] is not None


# --- validation ---------------------------------------------------------------

def test_bad_toml_line(dirs):
    error = error_of(dirs, 'description = "x"\n\nthreads = \n')
    assert error.line == 3
    assert "invalid TOML" in error.message
    assert "column" in error.message


def test_bad_toml_at_end(dirs):
    error = error_of(dirs, 'threads = 1\ndescription = "unterminated\n')
    assert error.line is not None and error.line >= 2
    assert "invalid TOML" in error.message


def test_not_utf8(dirs):
    path = dirs.path1 / "bin.toml"
    path.write_bytes(b'description = "\xff"\n')
    with pytest.raises(TcapError, match="UTF-8") as info:
        load("bin", dirs.environ)
    assert info.value.path == str(path)


def test_unknown_key_did_you_mean(dirs):
    error = error_of(dirs, 'description = "x"\nblas = 1\nthread = 2\n')
    assert error.line == 3
    assert "unknown key 'thread'" in error.message
    assert "did you mean 'threads'?" in error.message


def test_unknown_key_without_suggestion(dirs):
    error = error_of(dirs, "zzzzzz = 2\n")
    assert error.line == 1
    assert "did you mean" not in error.message


def test_unknown_table_line(dirs):
    error = error_of(dirs, 'threads = 2\n\n[evn]\nFOO = "1"\n')
    assert "did you mean 'env'?" in error.message
    assert error.line == 3


@pytest.mark.parametrize("key", ["threads", "blas", "openmp", "openblas", "numba", "workers"])
@pytest.mark.parametrize("value", ["0", "-1", "true", "1.5", '"cpus +"', '"foo"', '"cpus.real"', "[1]"])
def test_bad_counts(dirs, key, value):
    error = error_of(dirs, f'description = "d"\n# comment\n{key} = {value}\n')
    assert error.line == 3
    assert error.message.startswith(f"{key}: ")


@pytest.mark.parametrize("value", ["1", "64", '"cpus"', '"cpus / 2"', '"max(1, physical - 2)"'])
def test_good_counts(dirs, value):
    dirs.write(dirs.path1, "good", f"threads = {value}\n")
    load("good", dirs.environ)


@pytest.mark.parametrize("value", ['"first:0"', '"3-1"', '"bogus"', "3", '""', '"0-3,"'])
def test_bad_cpus(dirs, value):
    error = error_of(dirs, f"threads = 1\ncpus = {value}\n")
    assert error.line == 2
    assert error.message.startswith("cpus: ")


@pytest.mark.parametrize("value", ['"all"', '"physical"', '"first:2"', '"0-3,8"'])
def test_good_cpus(dirs, value):
    dirs.write(dirs.path1, "good", f"cpus = {value}\n")
    assert load("good", dirs.environ).settings["cpus"].value == value.strip('"')


@pytest.mark.parametrize("value", ['"loud"', "true", '"WARN"', "1"])
def test_bad_verify(dirs, value):
    error = error_of(dirs, f"\nverify = {value}\n")
    assert error.line == 2
    assert error.message.startswith("verify: ")


@pytest.mark.parametrize("mode", ["off", "warn", "strict", "enforce"])
def test_good_verify(dirs, mode):
    dirs.write(dirs.path1, "good", f'verify = "{mode}"\n')
    assert load("good", dirs.environ).settings["verify"].value == mode


@pytest.mark.parametrize("value", ["1", "[]", '["a", 3]', '[""]'])
def test_bad_extends(dirs, value):
    error = error_of(dirs, f"threads = 1\nextends = {value}\n")
    assert error.line == 2
    assert error.message.startswith("extends: ")


def test_bad_description(dirs):
    error = error_of(dirs, "description = 3\n")
    assert error.line == 1


def test_env_values(dirs):
    dirs.write(
        dirs.path1,
        "envy",
        'threads = 2\n[env]\nUNSET_ME = false\nCOUNT = 3\nRATIO = 1.5\nTEXT = "hello"\nOFF = "false"\n',
    )
    profile = load("envy", dirs.environ)
    env = {k: s.value for k, s in profile.env.items()}
    assert env == {"UNSET_ME": None, "COUNT": "3", "RATIO": "1.5", "TEXT": "hello", "OFF": "false"}
    assert profile.env["COUNT"].origin.line == 4
    assert profile.env["COUNT"].origin.key == "env.COUNT"
    assert "env" not in profile.settings


def test_env_child_overrides_parent(dirs):
    dirs.write(dirs.user, "base", '[env]\nA = "1"\nB = "2"\n')
    dirs.write(dirs.user, "kid", 'extends = "base"\n[env]\nB = false\nC = 3\n')
    env = {k: s.value for k, s in load("kid", dirs.environ).env.items()}
    assert env == {"A": "1", "B": None, "C": "3"}


def test_env_true_rejected(dirs):
    error = error_of(dirs, 'threads = 1\n\n[env]\nA = "1"\nFLAG = true\n')
    assert error.line == 5
    assert "env.FLAG" in error.message


@pytest.mark.parametrize("value", ["[1]", "{ x = 1 }"])
def test_env_nested_rejected(dirs, value):
    error = error_of(dirs, f"[env]\nX = {value}\n")
    assert error.line == 2


def test_env_bad_name(dirs):
    error = error_of(dirs, '[env]\nOK = "1"\n1BAD = "x"\n')
    assert error.line == 3
    assert "'1BAD'" in error.message


def test_env_not_a_table(dirs):
    error = error_of(dirs, 'threads = 1\nenv = "x"\n')
    assert error.line == 2


def test_error_str_has_path_and_line(dirs):
    error = error_of(dirs, "threads = 0\n")
    assert str(error) == f"{dirs.path1 / 'bad.toml'}:1: {error.message}"


def test_error_in_parent_points_at_parent(dirs):
    parent = dirs.write(dirs.user, "parent", "threads = 1\nblas = 0\n")
    dirs.write(dirs.path1, "child", 'extends = "parent"\n')
    with pytest.raises(TcapError) as info:
        load("child", dirs.environ)
    assert info.value.path == str(parent)
    assert info.value.line == 2


# --- built-in profiles --------------------------------------------------------

def test_builtin_profiles_exist():
    assert {"default", "serial", "pool", "kmeans", "physical"} <= set(BUILTIN_NAMES)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_profile_loads_and_resolves(tmp_path, name):
    environ = {"HOME": str(tmp_path), "TCAP_SITE_DIR": str(tmp_path / "site")}
    profile = load(name, environ)
    assert Path(profile.path).resolve() == BUILTIN / f"{name}.toml"
    assert profile.description
    cores = {cpu: (0, cpu % 8) for cpu in range(16)}
    machine = Machine(frozenset(range(16)), cores=cores)
    plan = resolve(profile, machine, Overrides())
    names = [change.name for change in plan.env]
    order = [v.name for v in VARIABLES]
    assert names == [n for n in order if n in names]
    assert sorted(names + [c.name for c in plan.left_alone]) == sorted(order)
    for change in plan.env:
        assert change.value is not None and int(change.value) >= 1
        assert int(change.value) <= 16


@pytest.mark.parametrize(
    ("text", "line"),
    [('threads = 1\n[evn.sub]\nX = 1\n', 2), ('threads = 1\n\n\n[[thread]]\nX = 1\n', 4)],
)
def test_unknown_table_forms_line(dirs, text, line):
    error = error_of(dirs, text)
    assert error.line == line
