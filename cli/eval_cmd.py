"""`biamat-engine eval`: clean, PGD-K, CW-K and AutoAttack accuracy of a trained classifier."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cli.app import app

_EPILOG = (
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


@app.command("eval", epilog=_EPILOG)
def eval_command(
    model: Path = typer.Argument(..., help="RUN_DIR, MODEL.safetensors (with model.json beside it) or CKPT.pt."),
    test: str = typer.Option(..., "--test", help="Test set: T.beton, T.npz or shapes:primary."),
    attacks: str = typer.Option("clean,pgd100,cw100,aa", help="Comma list of clean, pgdK, cwK, aa."),
    aa_attacks: Optional[str] = typer.Option(None, help="Custom AutoAttack list, e.g. apgd-ce,apgd-t."),
    aa_version: str = typer.Option("standard", help="AutoAttack version: standard, plus, rand (custom with --aa-attacks)."),
    aa_iterations: Optional[int] = typer.Option(None, help="APGD/FAB iterations for a quick run (default: the package's 100)."),
    aa_state: Optional[Path] = typer.Option(None, help="State file: an interrupted AutoAttack run resumes from it."),
    n: Optional[int] = typer.Option(None, help="Evaluate the first N test images (default: all)."),
    batch_size: int = typer.Option(256, help="Images per batch for every pass."),
    seed: int = typer.Option(0, help="Seed of the random starts and of AutoAttack."),
    eps: Optional[str] = typer.Option(None, help="L-inf radius, e.g. 8/255 (default: the run's config, else 8/255)."),
    step_size: str = typer.Option("2/255", help="PGD/CW step size, e.g. 2/255."),
    restarts: int = typer.Option(1, help="PGD/CW random restarts."),
    backend: str = typer.Option("eager", help="Clean-pass backend: eager, compile or tensorrt."),
    device: str = typer.Option("auto", help="auto (cuda when there is one), cpu, cuda or cuda:N."),
    out: Optional[Path] = typer.Option(None, help="Report path (default: eval.json in the run directory)."),
) -> None:
    """Evaluates a classifier: clean accuracy, PGD-K, CW-K and AutoAttack at L-inf eps."""
    from engine.distributed import World, init_from_env
    from engine.evaluation.backends import BackendUnavailable
    from engine.evaluation.report import parse_eps
    from engine.run_dir import write_json
    from engine.evaluation.runner import EvalPlan, resolve_eps, run_evaluation
    from engine.runtime import resolve_device

    console = Console(stderr=True)
    init_from_env(device)  # a no-op unless launched by torchrun: then each rank takes a part of the test set
    main = World.current().is_main
    try:
        eps_value, eps_source = resolve_eps(model, eps)
        config = EvalPlan(
            attacks=_split(attacks), aa_attacks=_split(aa_attacks or ""), aa_version=aa_version,
            aa_iterations=aa_iterations, aa_state=str(aa_state) if aa_state else None, eps=eps_value,
            step_size=parse_eps(step_size), restarts=restarts, n=n, batch_size=batch_size, seed=seed,
            backend=backend, device=str(resolve_device(device)),
        )
        with console.status("evaluating") if main else contextlib.nullcontext() as status:
            report = run_evaluation(model, test, config, progress=status.update if main else None)
    except (ValueError, FileNotFoundError, ImportError, BackendUnavailable) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    if not main:  # every rank holds the same report; rank 0 writes and prints it
        return
    report["eps_source"] = eps_source
    out = out or _default_out(model)
    write_json(out, report)
    Console().print(render_table(report))
    for warning in report["sanity_warnings"]:
        console.print(f"[yellow]warning ({warning['code']}):[/yellow] {warning['message']}")
    for note in report.get("notes", []):
        console.print(f"note: {note}")
    console.print(f"wrote {out}")
