"""The ceilings every input is held to before it is expanded or exported.

Profiles, policy files, flags, ``--set``, launcher variables and
expressions all pass through these; a value over a ceiling is a
configuration error (exit 2, one line), never a hang or a value no library
can honour.
"""

#: The largest CPU number in a CPU list: Linux builds allow at most 8192
#: CPUs (x86-64's MAXSMP sets CONFIG_NR_CPUS to 8192), so a range is never
#: expanded past this; the plan then checks the list against the CPUs this
#: machine really has.
MAX_CPU = 8191
#: Threads per pool, and worker processes: no more than the CPUs Linux can
#: run at once (a pool larger than the machine only oversubscribes it). A
#: count above this is a typo, and an OpenMP runtime asked for it reserves a
#: stack per thread (2-8 MiB each) and aborts the program at its first
#: parallel region.
MAX_THREADS = MAX_CPU + 1
#: Expressions ("max(1, cpus - 2)"): characters, nesting and digits per number.
MAX_EXPRESSION = 200
MAX_DEPTH = 32
MAX_DIGITS = 10
#: A value of ``[env]`` or ``--set`` (characters): far above any real
#: setting, far below the kernel's limit on one environment string.
MAX_VALUE = 4096
#: A profile or policy file (bytes): profiles are a few lines; a megabyte
#: is a wrong file, read no further.
MAX_FILE = 1 << 20
