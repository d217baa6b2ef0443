"""The processes of a session a test started (`start_new_session=True`): a sweep's driver and
everything Ray started for it, found through /proc and killed outright, as a crashed machine would."""
import os
import signal
from pathlib import Path


def session(sid: int) -> dict[int, str]:
    """pid -> command line of every process in session `sid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if entry.name.isdigit() and int(fields[3]) == sid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`."""
    for pid in session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
