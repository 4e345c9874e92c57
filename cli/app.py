"""The `biamat-engine` Typer app: one module per command, registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="biamat-engine",
    help="Biased multi-domain adversarial training (BiaMAT): prepare data, train, evaluate, benchmark.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Throughput benchmarks: print a table and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _register() -> None:
    # Each command module adds itself to `app` (or `bench_app`) when imported.
    from cli import train_cmd  # noqa: F401
    from cli import demo_cmd  # noqa: F401
    from cli import info_cmd  # noqa: F401
    from cli import eval_cmd  # noqa: F401
    from cli import export_cmd  # noqa: F401
    from cli import bench_eval  # noqa: F401
    from cli import bench_kernels  # noqa: F401
    from cli import prepare_cmd  # noqa: F401
    from cli import bench_loader  # noqa: F401
    from cli import bench_step  # noqa: F401
    from cli.bench_ddp import EPILOG as bench_ddp_epilog, bench_ddp

    if bench_ddp not in [c.callback for c in bench_app.registered_commands]:  # _register may run twice
        bench_app.command("ddp", epilog=bench_ddp_epilog)(bench_ddp)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
