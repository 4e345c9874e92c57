"""`biamat-engine eval`: clean, PGD-K, CW-K and AutoAttack accuracy of a trained classifier."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.console import console, err_console
from cli.errors import UsageError
from cli.options import RunDevice, fraction

EPILOG = (
    "Example: biamat-engine eval runs/demo --test shapes:primary --attacks clean,pgd100,cw100,aa "
    "--n 1000 --out runs/demo/eval.json\n\n"
    "Quick AutoAttack subset: --attacks clean,aa --aa-attacks apgd-ce,apgd-t"
)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def _default_out(model: Path) -> Path:
    from engine.run_dir import RunDir

    return RunDir.of(model).eval_report


def render_table(report: dict) -> Table:
    """The report as a rich table: one row per attack (and per AutoAttack stage)."""
    from engine.evaluation.report import summary_rows

    title = (f"{report.get('model') or 'model'}  |  Linf eps {report['eps']}  |  n {report['n']}  |  "
             f"{report['device_name']}")
    table = Table(title=title)
    for column, justify in (("attack", "left"), ("accuracy", "right"), ("correct", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    for row in summary_rows(report):
        table.add_row(*row)
    backend = report["backend"]
    if backend["name"] != "eager":
        table.add_row(f"clean ({backend['name']}, {backend['precision']})", f"{100 * backend['clean_acc']:.2f}%",
                      f"agree {100 * backend['agreement']:.2f}%", f"{backend['seconds']:.1f}")
    return table


def _plan(**options):
    """The EvalPlan of the options; what it rejects is an option value (eps and device arrive
    checked), so its InputError is a usage error."""
    from engine.evaluation.runner import EvalPlan
    from kernels.errors import InputError

    try:
        return EvalPlan(**options)
    except InputError as err:
        raise UsageError(str(err)) from None


DATA, ATTACKS, RUN = "Data", "Attacks", "Run"


def eval_command(
    model: Annotated[Path, typer.Argument(help="RUN_DIR, MODEL.safetensors (with model.json beside it) or CKPT.pt.")],
    test: Annotated[str, typer.Option("--test", help="Test set: T.beton, T.npz or shapes:primary.",
                                      rich_help_panel=DATA)],
    n: Annotated[Optional[int], typer.Option(
        help="Evaluate the first N test images (default: all).", rich_help_panel=DATA)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch for every pass.", rich_help_panel=DATA)] = 256,
    attacks: Annotated[str, typer.Option(
        help="Comma list of clean, fgsm, pgdK, cwK, aa.", rich_help_panel=ATTACKS)] = "clean,pgd100,cw100,aa",
    eps: Annotated[Optional[float], typer.Option(
        parser=fraction, metavar="EPS", rich_help_panel=ATTACKS,
        help="L-inf radius, e.g. 8/255 (default: the run's config, else 8/255).")] = None,
    step_size: Annotated[Optional[float], typer.Option(
        parser=fraction, metavar="STEP", rich_help_panel=ATTACKS,
        help="PGD/CW step size, e.g. 2/255 (default: the run's eval.step_size, else 2/255).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD/CW random restarts.", rich_help_panel=ATTACKS)] = 1,
    seed: Annotated[int, typer.Option(
        help="Seed of the random starts and of AutoAttack.", rich_help_panel=ATTACKS)] = 0,
    aa_attacks: Annotated[Optional[str], typer.Option(
        help="Custom AutoAttack list, e.g. apgd-ce,apgd-t.", rich_help_panel=ATTACKS)] = None,
    aa_version: Annotated[str, typer.Option(
        help="AutoAttack version: standard, plus, rand (custom with --aa-attacks).",
        rich_help_panel=ATTACKS)] = "standard",
    aa_iterations: Annotated[Optional[int], typer.Option(
        help="APGD/FAB iterations for a quick run (default: the package's 100).", rich_help_panel=ATTACKS)] = None,
    aa_state: Annotated[Optional[Path], typer.Option(
        help="State file: an interrupted AutoAttack run resumes from it.", rich_help_panel=ATTACKS)] = None,
    backend: Annotated[str, typer.Option(
        help="Clean-pass backend: eager, compile or tensorrt.", rich_help_panel=RUN)] = "eager",
    device: RunDevice = "auto",
    out: Annotated[Optional[Path], typer.Option(
        help="Report path (default: eval.json in the run directory). Never a file eval did not write; "
             "eval's own earlier report only when this evaluation covers it (its attacks or more, on as many "
             "images or more), else refused.", rich_help_panel=RUN)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace eval's own earlier report at OUT even when it holds more.",
        rich_help_panel=RUN)] = False,
) -> None:
    """Evaluate a classifier: clean accuracy, PGD-K, CW-K and AutoAttack at L-inf eps."""
    from engine.distributed import World, init_from_env
    from engine.evaluation.runner import run_evaluation
    from engine.runtime import resolve_device

    init_from_env(device)  # a no-op unless launched by torchrun: then each rank takes a part of the test set
    main = World.current().is_main
    plan = _plan(attacks=_split(attacks), aa_attacks=_split(aa_attacks or ""), aa_version=aa_version,
                 aa_iterations=aa_iterations, aa_state=str(aa_state) if aa_state else None, eps=eps,
                 step_size=step_size, restarts=restarts, n=n, batch_size=batch_size, seed=seed, backend=backend,
                 device=str(resolve_device(device)))
    out = out or _default_out(model)
    # Written after each attack too: an interruption or a failing attack keeps what was measured.
    # Under torchrun every rank evaluates its part and holds the whole report; rank 0 writes it.
    with err_console.status("evaluating") if main else contextlib.nullcontext() as status:
        report = run_evaluation(model, test, plan, progress=status.update if main else None,
                                out=out if main else None, overwrite=overwrite)  # eps and step left out: the run's
    if not main:
        return
    console.print(render_table(report))
    for warning in report["sanity_warnings"]:
        err_console.print(f"[yellow]warning ({warning['code']}):[/yellow] {warning['message']}")
    for note in report.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"wrote {out}")
