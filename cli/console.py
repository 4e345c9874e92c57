"""The one pair of consoles every command writes to.

stdout carries results (tables, `wrote PATH`), so `biamat-engine eval ... > table.txt` keeps
only them; stderr carries errors, warnings and progress. Rich looks `sys.stdout`/`sys.stderr` up
at each write, so tests that swap the streams (Typer's CliRunner) still capture both.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
