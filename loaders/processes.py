"""Whether a process still runs: how a writer tells a killed writer's temporaries (safe to
remove) from those of one still at work (left alone)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists, ours or someone else's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
