"""The `biamat-engine` command line (Typer)."""
