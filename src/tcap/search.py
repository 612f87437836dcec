"""Where profiles live: the search path (cheap; on the launch path)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_PROFILE = "default"


def builtin_dir() -> str:
    """The built-in profiles: inside the wheel, or ``profiles/`` of a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "profiles")
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(os.path.dirname(os.path.dirname(here)), "profiles")


def site_dir(environ: Mapping[str, str]) -> str:
    """``$TCAP_SITE_DIR``, default ``/etc/tcap``."""
    return environ.get("TCAP_SITE_DIR") or "/etc/tcap"


def search_path(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The profile directories in search order, each with a label."""
    dirs = [("TCAP_PROFILE_PATH", d) for d in environ.get("TCAP_PROFILE_PATH", "").split(":") if d]
    home = environ.get("HOME") or os.path.expanduser("~")
    config = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    dirs.append(("user", os.path.join(config, "tcap", "profiles")))
    dirs.append(("site", os.path.join(site_dir(environ), "profiles")))
    dirs.append(("built-in", builtin_dir()))
    return dirs


def is_path(spec: str) -> bool:
    """Whether ``-p spec`` names a file rather than a profile."""
    return "/" in spec or spec.endswith(".toml")
