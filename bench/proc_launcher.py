"""Shared by the benchmarks: start a measured command so its peak RSS is its own.

On Linux ru_maxrss survives execve (the exec'd program inherits the high-water mark of the address space it
replaced), and a child forked from a parent holding torch (~300+ MiB) would report at least the parent's RSS.
So every measured command is started by this tiny launcher (a bare `python -I -S`, ~6 MiB): it forks, execs
the command, and writes os.wait4's rusage as JSON:

    python -I -S -c LAUNCHER RECORD.json CMD ARGS...
"""

LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "wall_s": wall, "maxrss_kib": ru.ru_maxrss,
               "utime_s": ru.ru_utime, "stime_s": ru.ru_stime}, f)
"""
