"""The plan cache: tcap.cache."""

from __future__ import annotations

import marshal
import os
import stat
from pathlib import Path

import pytest

from tcap.cache import DIRNAME, FORMAT, MAX_ENTRIES, cache_file, entry_path, lookup, signature, store

KEY = ("0.1", "default", (("threads", 2),), ("/a", "/b"), ((0, 1), None, None, None, None))
RECIPE = {"env": [["OMP_NUM_THREADS", "2"], ["MKL_NUM_THREADS", None]], "pin": [0, 1], "verify": "warn"}


@pytest.fixture
def where(tmp_path: Path) -> str:
    return str(tmp_path / "cache" / "tcap" / DIRNAME)


@pytest.fixture
def dep(tmp_path: Path) -> Path:
    path = tmp_path / "profiles" / "default.toml"
    path.parent.mkdir()
    path.write_text("threads = 2\n")
    return path


def deps_for(*paths: Path) -> list[tuple[str, object]]:
    return [(str(p), signature(str(p))) for p in paths]


def test_store_then_lookup_hits(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    assert lookup(where, KEY) == RECIPE
    assert lookup(where, KEY + ("other",)) is None


def test_lookup_without_file_misses(where):
    assert lookup(where, KEY) is None


def test_files_are_private(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    entry = entry_path(where, KEY)
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(where).st_mode) & 0o077 == 0
    assert os.listdir(where) == [os.path.basename(entry)]  # no temporary file left behind


def test_one_file_per_key_each_read_by_name(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    store(where, KEY + ("other",), deps_for(dep), {**RECIPE, "pin": None})
    assert sorted(os.listdir(where)) == sorted(os.path.basename(entry_path(where, k)) for k in (KEY, KEY + ("other",)))
    os.unlink(entry_path(where, KEY + ("other",)))
    assert lookup(where, KEY) == RECIPE  # the other entry's file is never needed


def test_an_entry_of_another_key_under_this_name_misses(where, dep):
    store(where, KEY + ("other",), deps_for(dep), RECIPE)
    os.replace(entry_path(where, KEY + ("other",)), entry_path(where, KEY))  # as a hash collision would
    assert lookup(where, KEY) is None


@pytest.mark.parametrize("recipe", [
    [1, 2], {"env": 5}, {"env": [["A"]]}, {"env": [[1, "x"]]}, {"env": [["A=B", "x"]]}, {"env": [["A", 3]]},
    {"env": [], "pin": [1e400]}, {"env": [], "pin": [-1]}, {"env": [], "pin": [True]}, {"env": [], "pin": "0-1"},
    {"env": [], "place": {"count": 0, "allowed": [0]}}, {"env": [], "place": {"count": 1, "allowed": []}},
    {"env": [], "place": {"count": 1, "allowed": [0], "on_full": "never"}},
    {"env": [], "verify": "loud"}, {"env": [], "bootstrap": 3}, {"env": [], "cpus": 0}, {"env": [], "notes": "x"},
])
def test_an_entry_with_a_recipe_of_the_wrong_shape_misses(where, dep, recipe):
    store(where, KEY, deps_for(dep), recipe)
    assert lookup(where, KEY) is None


def test_touching_a_dependency_misses(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    st = os.stat(dep)
    os.utime(dep, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert lookup(where, KEY) is None


def test_editing_a_dependency_misses(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    st = os.stat(dep)
    dep.write_text("threads = 3\nblas = 1\n")
    os.utime(dep, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
    assert lookup(where, KEY) is None


def test_replacing_a_dependency_misses(where, dep, tmp_path):
    store(where, KEY, deps_for(dep), RECIPE)
    st = os.stat(dep)
    other = tmp_path / "new.toml"
    other.write_text("threads = 2\n")  # same size and content
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, dep)  # new inode
    assert lookup(where, KEY) is None


def test_removing_a_dependency_misses(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    dep.unlink()
    assert lookup(where, KEY) is None


def test_creating_a_previously_absent_candidate_misses(where, dep, tmp_path):
    absent = tmp_path / "user" / "default.toml"
    depends = [(str(absent), None), *deps_for(dep)]
    assert depends[0][1] is None
    store(where, KEY, depends, RECIPE)
    assert lookup(where, KEY) == RECIPE
    absent.parent.mkdir()
    absent.write_text("threads = 1\n")
    assert lookup(where, KEY) is None


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o622])
def test_cache_writable_by_others_is_ignored(where, dep, mode):
    store(where, KEY, deps_for(dep), RECIPE)
    os.chmod(entry_path(where, KEY), mode)
    assert lookup(where, KEY) is None


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_cache_readable_by_others_is_fine(where, dep, mode):
    store(where, KEY, deps_for(dep), RECIPE)
    os.chmod(entry_path(where, KEY), mode)
    assert lookup(where, KEY) == RECIPE


def test_cache_owned_by_another_user_is_ignored(where, dep):
    store(where, KEY, deps_for(dep), RECIPE)
    entry = entry_path(where, KEY)
    owner = os.stat(entry).st_uid
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    os.chown(entry, owner + 1000, -1)
    assert lookup(where, KEY) is None


def test_a_cache_directory_another_user_can_write_is_not_written(where, dep):
    os.makedirs(where)
    os.chmod(where, 0o777)
    store(where, KEY, deps_for(dep), RECIPE)
    assert os.listdir(where) == []


def test_a_fifo_entry_misses_without_blocking(where, dep):
    os.makedirs(where)
    os.mkfifo(entry_path(where, KEY), 0o600)
    assert lookup(where, KEY) is None  # a blocking open would hang here


def test_a_huge_entry_is_not_read(where, dep):
    os.makedirs(where)
    entry = entry_path(where, KEY)
    with open(entry, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB that take no space
    os.chmod(entry, 0o600)
    assert lookup(where, KEY) is None


def test_symlinked_cache_is_ignored(where, dep, tmp_path):
    store(where, KEY, deps_for(dep), RECIPE)
    entry = entry_path(where, KEY)
    real = tmp_path / "real.plan"
    os.replace(entry, real)
    os.symlink(real, entry)
    assert lookup(where, KEY) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\x00\xff", marshal.dumps([1, 2, 3]), marshal.dumps((FORMAT, KEY, "not a pair")),
     marshal.dumps((FORMAT - 1, KEY, (), RECIPE)), marshal.dumps((FORMAT, KEY, (((1,),),), RECIPE))[:-3]],
)
def test_corrupt_cache_misses_without_raising(where, dep, content):
    os.makedirs(where, exist_ok=True)
    with open(entry_path(where, KEY), "wb") as f:
        f.write(content)
    os.chmod(entry_path(where, KEY), 0o600)
    assert lookup(where, KEY) is None
    # and storing over it works
    store(where, KEY, deps_for(dep), RECIPE)
    assert lookup(where, KEY) == RECIPE


@pytest.mark.parametrize(
    "depends",
    [(("/x",),), 1, ((None, None),), ((1, None),), (("/x", None, 3),), ("ab",), (b"/x",)],
)
def test_bad_dependency_entry_misses_without_raising(where, depends):
    os.makedirs(where, exist_ok=True)
    with open(entry_path(where, KEY), "wb") as f:
        marshal.dump((FORMAT, KEY, depends, RECIPE), f)
    os.chmod(entry_path(where, KEY), 0o600)
    try:
        result = lookup(where, KEY)
    except Exception as error:  # pragma: no cover - the failure being tested
        pytest.fail(f"lookup raised {error!r}")
    assert result is None


def test_cache_directory_is_a_file_store_does_not_raise(tmp_path, dep):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    where = str(blocker / "tcap" / DIRNAME)
    store(where, KEY, deps_for(dep), RECIPE)
    assert lookup(where, KEY) is None


def test_none_path_disables(dep):
    store(None, KEY, deps_for(dep), RECIPE)
    assert lookup(None, KEY) is None


@pytest.mark.parametrize(("value", "enabled"), [("1", False), ("yes", False), ("", True), ("0", True)])
def test_tcap_no_cache(tmp_path, value, enabled):
    environ = {"HOME": str(tmp_path), "TCAP_NO_CACHE": value}
    assert (cache_file(environ) is not None) == enabled


def test_cache_file_location(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert cache_file(home) == os.path.join(str(tmp_path), ".cache", "tcap", DIRNAME)
    xdg = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert cache_file(xdg) == os.path.join(str(tmp_path / "xdg"), "tcap", DIRNAME)


def test_no_cache_end_to_end(tmp_path, dep):
    environ = {"HOME": str(tmp_path), "TCAP_NO_CACHE": "1"}
    store(cache_file(environ), KEY, deps_for(dep), RECIPE)
    assert not (tmp_path / ".cache").exists()


def test_max_entries_bound(where, dep):
    total = MAX_ENTRIES + 5
    for i in range(total):
        store(where, ("k", i), deps_for(dep), recipe(i))
        os.utime(entry_path(where, ("k", i)), ns=(i * 10**9, i * 10**9))  # the order a coarse clock may blur
    assert len(os.listdir(where)) == MAX_ENTRIES
    for i in range(5):
        assert lookup(where, ("k", i)) is None
    for i in range(5, total):
        assert lookup(where, ("k", i)) == recipe(i)


def recipe(i: object) -> dict[str, object]:
    return {"env": [["OMP_NUM_THREADS", str(i)]]}


def test_restoring_a_key_makes_it_newest(where, dep):
    for i in range(MAX_ENTRIES):
        store(where, ("k", i), deps_for(dep), recipe(i))
        os.utime(entry_path(where, ("k", i)), ns=(i * 10**9, i * 10**9))
    store(where, ("k", 0), deps_for(dep), recipe("again"))
    store(where, ("k", "new"), deps_for(dep), recipe("new"))
    assert lookup(where, ("k", 0)) == recipe("again")
    assert lookup(where, ("k", 1)) is None
    assert lookup(where, ("k", "new")) == recipe("new")


def test_signature(tmp_path):
    path = tmp_path / "f"
    assert signature(str(path)) is None
    path.write_text("abc")
    st = os.stat(path)
    assert signature(str(path)) == (st.st_mtime_ns, 3, st.st_ino)
