"""Every example of hostile or careless input from the field: a one-line
error (exit 2, nothing started) or the right answer, in well under a
second (each run is given 10 s before it counts as a hang)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from conftest import PYTHON, TCAP, Isolated
from tcap.bounds import MAX_CPU, MAX_THREADS


def quick(iso: Isolated, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    result = iso.run(*args, env=env, timeout=10)
    assert time.monotonic() - start < 5, f"tcap {' '.join(args)} took {time.monotonic() - start:.1f} s"
    return result


def one_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("tcap: error: "), result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


@pytest.mark.parametrize("spec", ["0-99999999999", "0-4294967296", f"0-{MAX_CPU + 1}", "first:99999999",
                                  "auto:99999999999"])
def test_huge_cpu_ranges_in_a_profile_or_flag_fail_fast(iso: Isolated, spec: str):
    marker = iso.work / "started"
    path = iso.write_profile("wide", f'cpus = "{spec}"\n')
    one_error(quick(iso, "run", "-p", "wide", "--", "touch", str(marker)), f"{path}:1: cpus:")
    one_error(quick(iso, "run", "--cpus", spec, "--", "touch", str(marker)), "--cpus:")
    assert not marker.exists()


def test_shell_init_with_a_broken_site_profile_does_not_hang(iso: Isolated):
    (iso.site / "profiles").mkdir()
    iso.write_profile("wide", 'cpus = "0-99999999999"\n', directory=iso.site / "profiles")
    result = quick(iso, "shell-init", "bash")
    assert result.returncode == 0 and "complete -F _tcap_complete tcap" in result.stdout


@pytest.mark.parametrize(("flags", "part"), [
    (["--threads", "100000000000000000000"], "--threads:"),
    (["--threads", "cpus*1000000000"], f"above tcap's ceiling of {MAX_THREADS} threads per pool"),
    (["--openmp", "9" * 5000], "--openmp:"),
    (["--set", f"OMP_NUM_THREADS={MAX_THREADS + 1}"], "OMP_NUM_THREADS"),
    (["--set", "OMP_NUM_THREADS=0"], "asks for 0 threads"),
    (["--set", "X=" + "y" * 5000], "above tcap's limit of 4096"),
    (["--threads", "(" * 40 + "1" + ")" * 40], "nests deeper"),
    (["--threads", "1+" * 150 + "1"], "above tcap's limit of 200"),
])
def test_counts_over_the_ceilings_never_leave_tcap(iso: Isolated, flags: list[str], part: str):
    one_error(quick(iso, "run", *flags, "--", PYTHON, "-c", "pass"), part)


def test_a_huge_count_in_a_profile_names_file_and_line(iso: Isolated):
    path = iso.write_profile("big", "description = 'x'\nthreads = 100000000000000000000\n")
    one_error(quick(iso, "show", "-p", "big"), f"{path}:2: threads: a number is above tcap's ceiling")


def test_output_to_a_full_disk_is_an_io_error(iso: Isolated):
    with open("/dev/full", "w") as full:
        result = subprocess.run([str(TCAP), "show"], env=iso.env, stdout=full, stderr=subprocess.PIPE, text=True,
                                timeout=10)
    assert result.returncode == 74
    assert result.stderr == "tcap: error: I/O error on standard output: No space left on device\n"


def test_a_profile_with_a_byte_order_mark_is_read(iso: Isolated):
    path = iso.user_profiles / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfthreads = 1\n")
    result = quick(iso, "show", "-p", "bom", "--json")
    assert result.returncode == 0, result.stderr
    assert '"threads": 1' in result.stdout


def test_a_profile_that_is_not_utf8_names_the_line(iso: Isolated):
    path = iso.user_profiles / "latin.toml"
    path.write_bytes(b"threads = 1\ndescription = 'caf\xe9'\n")
    one_error(quick(iso, "show", "-p", "latin"), f"{path}:2: not UTF-8 text (byte 31)")


def test_completion_offers_sh_only_where_it_is_accepted(iso: Isolated):
    script = quick(iso, "shell-init", "bash").stdout
    [line] = [line for line in script.splitlines() if "--shell)" in line]
    assert re.search(r"== env \]\]; then .*\"sh bash zsh fish\".*else .*\"bash zsh fish\"", line), line
    fish = quick(iso, "shell-init", "fish").stdout
    assert "-n 'not __fish_seen_subcommand_from env' -l shell -x -a 'bash zsh fish'" in fish
    assert quick(iso, "alias", "--shell", "sh").returncode == 2


def test_an_unwritable_bookings_directory_is_an_io_error(iso: Isolated):
    blocker = iso.root / "file"
    blocker.write_text("")
    marker = iso.work / "started"
    result = quick(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker),
                   env={**iso.env, "TCAP_BOOKINGS_DIR": str(blocker / "bookings")})
    assert result.returncode == 74 and not marker.exists()
    assert result.stderr == f"tcap: error: {blocker}/bookings: cannot create the CPU bookings directory: Not a " \
                            "directory\n"


def test_an_unwritable_cache_does_not_stop_the_command(iso: Isolated):
    blocker = iso.root / "file"
    blocker.write_text("")
    result = quick(iso, "run", "--", PYTHON, "-c", "print('ran')", env={**iso.env, "XDG_CACHE_HOME": str(blocker)})
    assert result.returncode == 0 and result.stdout == "ran\n"
