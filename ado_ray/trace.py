"""`ADO_TRACE_STARTUP=1`: where a run's start-up and teardown time goes, on stderr.

Each mark is one line, `ado-trace <unix time, s> +<s since this process started> <thread>
<what>`, written the moment a stage is reached: the CLI parsed, the config resolved,
`ray.init` begun and done, the plan checked, the run stored, the actors ready, the first
task handed to a runner and back, Ray shut down. `bench/startup.py` reads them; a person
can too. Off (one look-up in the environment a mark) unless the variable is `1`; never on
stdout, so `--json` output stays one object.
"""

from __future__ import annotations

import os
import sys
import threading
import time

ENV = "ADO_TRACE_STARTUP"
PREFIX = "ado-trace"


def mark(what: str) -> None:
    """Write one trace line for `what`, if tracing is on."""
    if os.environ.get(ENV) != "1":
        return
    now = time.time()
    line = f"{PREFIX} {now:.3f} +{_since_start():.3f} {threading.current_thread().name} {what}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: a trace is not worth an error
        pass


def _since_start() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere 0)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return up - ticks / os.sysconf("SC_CLK_TCK")
