"""What tcap prints for shells: aliases (``tcap alias``) and ``tcap shell-init``.

Pure builders: every value that reaches a shell (profile names, paths,
``[env]`` values) goes through ``render.quote`` for that shell, so quotes,
``$()``, backticks, ``;``, backslashes, spaces and newlines arrive as data
and never run.

Completion is written by hand for bash, zsh (bash's, through bashcompinit)
and fish: tcap's parser is hand-written for launch speed, so the completion
libraries that derive scripts from an argparse parser (shtab, argcomplete)
have nothing to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tcap.profiles import ALIAS_RE, SHELL_SPECIAL
from tcap.render import comment, quote, word

SHELLS = ("bash", "zsh", "fish")
#: Variables fish keeps for itself (read-only or special): never ``set -lx``.
#: Profiles cannot set them ([env] refuses every shell's special names), so
#: this only guards what tcap itself might add.
FISH_SPECIAL = SHELL_SPECIAL["fish"]


def alias_name(profile: str, alias: str | None) -> str:
    return alias or f"tcap-{profile}"


def valid_alias(name: str) -> bool:
    """Whether ``name`` can be printed as an alias (fish: function) name as
    it is: a plain command word, nothing a shell would expand or split."""
    return bool(ALIAS_RE.match(name))


def _checked(name: str) -> str:
    if not valid_alias(name):  # the commands check first; this is the last line of defence
        raise ValueError(f"not a valid alias name: {name!r}")
    return name


def dynamic_alias(name: str, tcap: Sequence[str], profile: str, shell: str) -> str:
    """An alias (fish: a function) running ``tcap run -p PROFILE --``."""
    name = _checked(name)
    words = [*tcap, "run", "-p", profile, "--"]
    body = " ".join(word(item, shell) for item in words)
    if shell == "fish":
        return f"function {name} --description {quote(f'tcap run -p {profile}', shell)}\n    {body} $argv\nend"
    return f"alias {name}={quote(body, shell)}"


def static_alias(
    name: str,
    recipe: Mapping[str, Any],
    shell: str,
    taskset: str | None,
    header: str,
) -> str:
    """An alias (fish: a function) with the plan baked in: variables, the
    probe's bootstrap on PYTHONPATH, and pinning through ``taskset``; no
    Python runs in front of the command."""
    name = _checked(name)
    bootstrap = recipe.get("bootstrap")
    env = [(n, v) for n, v in recipe["env"] if v is not None]
    # An unset PYTHONPATH still gets the probe's bootstrap, alone (as tcap run does).
    keep_path = not any(n == "PYTHONPATH" and v is None for n, v in recipe["env"])
    unset = [n for n, v in recipe["env"] if v is None and not (bootstrap and n == "PYTHONPATH")]
    if shell == "fish":  # fish's own variables cannot be set with set -lx: pass them through env
        special = [(n, v) for n, v in env if n in FISH_SPECIAL]
        env = [(n, v) for n, v in env if n not in FISH_SPECIAL]
    else:
        special = []
    pin = recipe.get("pin")
    prefix: list[str] = []
    if unset or special:
        prefix += ["env", *(f"-u {quote(n, shell)}" for n in unset)]
        prefix += [quote(f"{n}={v}", shell) for n, v in special]
    if pin is not None and taskset:
        from tcap.cpuset import format_cpu_list

        prefix += [quote(taskset, shell), "-c", quote(format_cpu_list(pin), shell)]
    lines = [comment(header)]
    if pin is not None and not taskset:
        lines.append("# taskset was not found, so this alias does not pin CPUs as the plan says")
    if shell == "fish":
        lines.append(f"function {name}")
        lines += [f"    set -lx {n} {word(v, shell)}" for n, v in env]
        if bootstrap:
            # fish keeps *PATH variables as lists and joins them with ':'.
            lines.append(f"    set -lx PYTHONPATH {quote(bootstrap, shell)}" + (" $PYTHONPATH" if keep_path else ""))
        lines.append("    " + " ".join([*prefix, "$argv"] if prefix else ["command", "$argv"]))
        lines.append("end")
        return "\n".join(lines)
    words = [f"{n}={word(v, shell)}" for n, v in env]
    if bootstrap:
        words.append(f"PYTHONPATH={quote(bootstrap, shell)}" + ('"${PYTHONPATH:+:$PYTHONPATH}"' if keep_path else ""))
    body = " ".join(words + prefix)
    lines.append(f"alias {name}={quote(body, shell)}")
    return "\n".join(lines)


# Completion. Subcommands and their options mirror tcap.cli.COMMANDS.
Commands = Mapping[str, tuple[Mapping[str, str], Sequence[str], "bool | str"]]


def completion(shell: str, tcap: Sequence[str], commands: Commands) -> str:
    top = sorted({name.split()[0] for name in commands} | {"alias", "shell-init"})
    options = {name: sorted([*valued, *flags, "--help"]) for name, (valued, flags, _) in commands.items()}
    options["shell-init"] = ["bash", "zsh", "fish", *options.get("shell-init", [])]
    call = " ".join(quote(word, shell) for word in tcap)
    if shell == "fish":
        return _fish_completion(top, options, call)
    lines = [
        "_tcap_complete() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" i sub',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        if [[ ${COMP_WORDS[i]} == -- ]]; then COMPREPLY=($(compgen -c -- "$cur")); return; fi',
        "    done",
        '    case "$prev" in',
        f'        -p|--profile) COMPREPLY=($(compgen -W "$({call} profiles --names 2>/dev/null)" -- "$cur"))'
        "; return ;;",
        '        --verify) COMPREPLY=($(compgen -W "off warn strict enforce" -- "$cur")); return ;;',
        '        --share) COMPREPLY=($(compgen -W "busy off" -- "$cur")); return ;;',
        # tcap env also prints POSIX sh; aliases are for bash, zsh and fish only.
        '        --shell) if [[ ${COMP_WORDS[1]} == env ]]; then COMPREPLY=($(compgen -W "sh bash zsh fish" -- "$cur"))'
        '; else COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")); fi; return ;;',
        '        --report-json|--plot|--plan|--prefix|--python) COMPREPLY=($(compgen -f -- "$cur")); return ;;',
        "    esac",
        f'    if ((COMP_CWORD == 1)); then COMPREPLY=($(compgen -W {quote(" ".join(top), shell)} -- "$cur"))'
        "; return; fi",
        '    sub="${COMP_WORDS[1]}"',
        '    if [[ $sub == kernel ]]; then',
        '        if ((COMP_CWORD == 2)); then COMPREPLY=($(compgen -W "install list remove" -- "$cur")); return; fi',
        '        sub="kernel ${COMP_WORDS[2]}"',
        "    fi",
        '    case "$sub" in',
    ]
    for name, words in sorted(options.items()):
        choices = quote(" ".join(words), shell)
        lines.append(f'        {quote(name, shell)}) COMPREPLY=($(compgen -W {choices} -- "$cur")) ;;')
    lines += [
        "    esac",
        "}",
    ]
    if shell == "zsh":
        lines = [
            "if ! (( $+functions[compdef] )); then autoload -Uz compinit && compinit -u; fi",
            "autoload -Uz bashcompinit && bashcompinit",
            *lines,
        ]
    lines.append("complete -F _tcap_complete tcap")
    return "\n".join(lines)


def _fish_completion(top: Sequence[str], options: Mapping[str, Sequence[str]], call: str) -> str:
    lines = [
        "complete -c tcap -f",
        f"complete -c tcap -n __fish_use_subcommand -a {quote(' '.join(top), 'fish')}",
        "complete -c tcap -n '__fish_seen_subcommand_from kernel; and not __fish_seen_subcommand_from "
        "install list remove' -a 'install list remove'",
        # The -a argument is fish code run at each completion: tcap's words
        # are quoted inside it, and it is quoted as a whole.
        f"complete -c tcap -s p -l profile -x -a {quote(f'({call} profiles --names 2>/dev/null)', 'fish')}",
        "complete -c tcap -l verify -x -a 'off warn strict enforce'",
        "complete -c tcap -l share -x -a 'busy off'",
        "complete -c tcap -n '__fish_seen_subcommand_from shell-init' -a 'bash zsh fish'",
        "complete -c tcap -n '__fish_seen_subcommand_from env' -l shell -x -a 'sh bash zsh fish'",
        "complete -c tcap -n 'not __fish_seen_subcommand_from env' -l shell -x -a 'bash zsh fish'",
    ]
    for name, words in sorted(options.items()):
        sub = name.split()[-1]
        for option in words:
            if option.startswith("--") and option not in ("--profile", "--verify", "--share", "--shell"):
                condition = quote("__fish_seen_subcommand_from " + sub, "fish")
                lines.append(f"complete -c tcap -n {condition} -l {option[2:]}")
    return "\n".join(lines)
