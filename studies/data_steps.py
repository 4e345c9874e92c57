"""The data files a study makes itself, each by the biamat-engine command that makes such data,
run here through the engine's own functions (no subprocess):

    prepare       loaders.prepare.prepare (the function `biamat-engine prepare` calls)
    pseudo-label  engine.pseudo_label.pseudo_label   (Tables 3 and 7: Carmon et al.'s RST data)
    robustify     engine.robustify.robustify         (Table 6: Ilyas et al.'s robust dataset)

A step is data: its command, the arguments before OUT, OUT, and its options, so `--dry-run`
prints the very command it runs. The same type is a recipe before it is placed: OUT a bare file
name and `{data}` in the arguments standing for the folder OUT will be in (studies/paper_data.py
holds the paper-scale files so), `at(folder)` placing it. A step whose OUT exists is done (every
writer publishes its file atomically, so a file that exists is whole); robustify resumes its own
saved chunks.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataStep:
    """One file a study writes before the runs that read it."""

    command: str
    """prepare | pseudo-label | robustify."""
    args: tuple[str, ...]
    """The arguments before OUT: (FORMAT, SOURCE) for prepare, (MODEL, DATA) for the others."""
    out: Path
    options: tuple[tuple[str, object], ...] = ()
    """(option, value) after OUT, as the command's --options (value True: a flag)."""
    after: Path | None = None
    """The run folder whose trained model the step reads (it runs after that run)."""
    images: int | None = None
    """Images in the file as published, where known: the plan's estimate reads it while the file
    is not there yet."""

    def at(self, folder: str | Path) -> "DataStep":
        """This recipe writing its file (OUT's name) in `folder`, `{data}` in its arguments
        standing for that folder, so files made from other files find them beside it."""
        folder = Path(folder)
        return replace(self, args=tuple(a.replace("{data}", str(folder)) for a in self.args),
                       out=folder / self.out.name)

    @property
    def done(self) -> bool:
        return self.out.exists()

    def command_line(self) -> str:
        opts = [a for name, value in self.options
                for a in ([f"--{name}"] if value is True else [f"--{name}", str(value)])]
        return shlex.join(["biamat-engine", self.command, *self.args, str(self.out), *opts])

    def make(self) -> None:
        """Writes OUT (nothing when it is there already)."""
        if self.done:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        log.info("making %s: %s", self.out, self.command_line())
        _MAKERS[self.command](self, dict(self.options))


def _prepare(step: DataStep, options: dict) -> None:
    """What `prepare` does (command_line), each file recorded as prepare's output like the command's own."""
    from engine.outputs import claim_beton, record_beton
    from loaders.prepare import prepare, write_plain
    from loaders.sources.derive import parse_sizes

    def write(out, dataset, format: str, split: str, source: str) -> dict:
        claim_beton(out, "prepare", overwrite=False, inputs=str(source).split(","))
        manifest = write_plain(out, dataset, format, split, source)
        record_beton(out, "prepare")
        return manifest

    from loaders.sources.derive import parse_class_ids

    format, source = step.args
    shape_knobs = ("n", "difficulty", "classes", "groups") if format == "shapes" else ()
    shapes = {k: options[k] for k in shape_knobs if k in options}
    # As the command reads --classes: a class count for shapes, class ids (0,2,4) for any other format.
    classes = parse_class_ids(str(options["classes"])) if "classes" in options and format != "shapes" else None
    prepare(format, source, step.out, split=options.get("split", "train"), size=options.get("size"),
            seed=int(options.get("seed", 0)), shapes=shapes, download=bool(options.get("download", False)),
            workers=int(options.get("workers", 1)),
            parts=parse_sizes(options["parts"]) if "parts" in options else None, part=options.get("part"),
            uniform_noise=options.get("uniform-noise"), classes=classes,
            n_per_class=int(options["n-per-class"]) if "n-per-class" in options else None,
            grey=bool(options.get("grey", False)), write=write)


def _pseudo_label(step: DataStep, options: dict) -> None:
    from engine.pseudo_label import pseudo_label

    model, aux = step.args
    top_k = None if options.get("all") else int(options["top-k-per-class"])
    pseudo_label(model, aux, step.out, top_k=top_k, device=options.get("device", "auto"))


def _robustify(step: DataStep, options: dict) -> None:
    from engine.robustify import robustify

    model, data = step.args
    keys = {"steps": int, "step-size": float, "seed": int, "limit": int, "batch-size": int, "chunk-size": int}
    kwargs = {name.replace("-", "_"): cast(options[name]) for name, cast in keys.items() if name in options}
    robustify(model, data, step.out, device=options.get("device", "auto"), **kwargs)


_MAKERS = {"prepare": _prepare, "pseudo-label": _pseudo_label, "robustify": _robustify}
