"""The `biamat-engine` Typer app: every command is a plain function in its own module, registered
here, in the order `--help` lists them. Command modules never import this one."""

from __future__ import annotations

import inspect
from typing import Callable

import typer
from typer.core import TyperGroup

from cli import (analyze_cmd, bench_ddp, bench_eval, bench_kernels, bench_loader, bench_step, demo_cmd, eval_cmd,
                 export_cmd, info_cmd, prepare_cmd, pseudo_label_cmd, robustify_cmd, study_cmd, theory_cmd,
                 train_cmd)
from cli.errors import error_context


class _Group(TyperGroup):
    """Runs whichever command was asked for (bench's too: they run inside this call) in the one
    error context, so no command handles its own errors."""

    def invoke(self, ctx):
        with error_context():
            return super().invoke(ctx)


def _add(group: typer.Typer, name: str, command: Callable, epilog: str) -> None:
    # Typer's rich mode keeps a docstring's line breaks; one line per paragraph lets it wrap
    # the text to the terminal instead.
    paragraphs = inspect.getdoc(command).split("\n\n")
    group.command(name, help="\n\n".join(" ".join(p.split()) for p in paragraphs), epilog=epilog)(command)


app = typer.Typer(
    name="biamat-engine",
    cls=_Group,
    help="Biased multi-domain adversarial training (BiaMAT): prepare data, train, evaluate, benchmark.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Throughput benchmarks: print a table and write JSON.", no_args_is_help=True)
theory_app = typer.Typer(help="The paper's theory, simulated: print the statements' checks, write a report.",
                         no_args_is_help=True)

# The order of a paper run (README): prepare the data, train, evaluate, export the model,
# pseudo-label auxiliary data with a trained model (the Carmon et al. comparison), analyse
# the runs; then demo, the same pipeline on built-in data; info, the diagnosis when something
# above does not work; and last bench, which measures the engine rather than using it (Typer lists a group of
# subcommands after the plain commands in any case).
_add(app, "prepare", prepare_cmd.prepare_command, prepare_cmd.EPILOG)
_add(app, "train", train_cmd.train_command, train_cmd.EPILOG)
_add(app, "eval", eval_cmd.eval_command, eval_cmd.EPILOG)
_add(app, "export", export_cmd.export_command, export_cmd.EPILOG)
_add(app, "robustify", robustify_cmd.robustify_command, robustify_cmd.EPILOG)  # a trained model's robust dataset
_add(app, "pseudo-label", pseudo_label_cmd.pseudo_label_command, pseudo_label_cmd.EPILOG)  # auxiliary data a trained model labels
_add(app, "analyze", analyze_cmd.analyze_command, analyze_cmd.EPILOG)
_add(app, "study", study_cmd.study_command, study_cmd.EPILOG)
_add(app, "demo", demo_cmd.demo_command, demo_cmd.EPILOG)
_add(app, "info", info_cmd.info_command, info_cmd.EPILOG)
app.add_typer(bench_app, name="bench")
app.add_typer(theory_app, name="theory")

# The training step first (the number the engine exists for), then what feeds it (loader,
# kernels), then evaluation, then scaling over processes.
_add(bench_app, "step", bench_step.bench_step, bench_step.EPILOG)
_add(bench_app, "loader", bench_loader.bench_loader, bench_loader.EPILOG)
_add(bench_app, "kernels", bench_kernels.bench_kernels, bench_kernels.EPILOG)
_add(bench_app, "eval", bench_eval.bench_eval, bench_eval.EPILOG)
_add(bench_app, "ddp", bench_ddp.bench_ddp, bench_ddp.EPILOG)

_add(theory_app, "gaussian", theory_cmd.gaussian_command, theory_cmd.EPILOG)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
