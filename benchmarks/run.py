"""`make bench`: run every benchmark and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import alias  # noqa: E402
import kernel  # noqa: E402
import launcher  # noqa: E402
import noflags  # noqa: E402
import plugin  # noqa: E402
import probe  # noqa: E402
import profiles  # noqa: E402
import ranks  # noqa: E402
import report  # noqa: E402
import sampler  # noqa: E402
import workloads  # noqa: E402
from common import machine_description  # noqa: E402

INTRO = """\
# Benchmarks

Written by `make bench` (benchmarks/run.py); do not edit by hand. The machine is
noisy, so every comparison below is measured side by side in one run, with cases
interleaved, and quoted as medians with their range.
"""


#: Every section of docs/benchmarks.md, in order. A kernel start and kill
#: take ~0.7 s: 40 rounds (+3 warm-up) of 3 cases is about 90 s.
SECTIONS = {
    "launcher": lambda args: launcher.run(args.rounds),
    "probe": lambda args: probe.run(2 * args.rounds),
    "alias": lambda args: alias.run(2 * args.rounds),
    "sampler": lambda args: sampler.run(20),
    "kernel": lambda args: kernel.run(max(10, args.rounds * 2 // 3)),
    "workloads": lambda args: workloads.run(args.workload_rounds),
    "profiles": lambda args: profiles.run(args.workload_rounds + 2),
    "ranks": lambda args: ranks.run(args.workload_rounds + 2),
    "report": lambda args: report.run(),
    "noflags": lambda args: noflags.run(args.workload_rounds),
    "plugin": lambda args: plugin.run(args.workload_rounds),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--workload-rounds", type=int, default=5)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only these sections and replace them in the existing output file")
    args = parser.parse_args()
    today = datetime.date.today().isoformat()
    if args.only:
        text = args.output.read_text()
        for name in args.only:
            section = SECTIONS[name](args)
            heading = section.splitlines()[0]
            alone = f"Re-measured alone on {today} (`benchmarks/run.py --only {name}`)."
            section = section.replace("\n", f"\n\n{alone}\n", 1)
            head, found, rest = text.partition(heading + "\n")
            if not found:  # a new section: at the end
                text = text.rstrip("\n") + "\n\n" + section
                continue
            _, next_heading, tail = rest.partition("\n## ")
            text = head + section + ("\n## " + tail if next_heading else "")
        args.output.write_text(text)
        print(text)
        return 0
    sections = [SECTIONS[name](args) for name in SECTIONS]
    text = INTRO + f"\nMachine: {machine_description()}. Run on {today}.\n\n" + "\n".join(sections)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
