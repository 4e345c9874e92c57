"""Export of the primary classifier for RobustBench: WideResNet weights, model card, README.

RobustBench's `WideResNet(depth, widen_factor, num_classes)` has our key names (`conv1`,
`block1.layer.N.{bn1, conv1, bn2, conv2, convShortcut}`, `bn1`, `fc`) but neither the
`mu`/`sigma` normalisation buffers nor the auxiliary heads, so both are left out of the weights.
RobustBench models take [0, 1] inputs, so the normalisation travels in the card (`normalization`
kind, mean and std) and is applied in front of the network: `net((x - mean) / std)`, or, for a
per-image model, each image standardised (`net(standardize(x))`, the README writes it out). It
is not folded into `conv1`: that conv zero-pads the *normalised* image, i.e. pads with the mean
colour, and a folded conv would pad raw pixels with black, changing every border output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from engine.config import flatten
from engine.evaluation.report import read_eval_report
from engine.models.heads import PER_IMAGE
from engine.outputs import claim_folder, publish_folder
from engine.run_dir import RunDir, read_config, read_json, write_json
from engine.run_record import read_run_record
from kernels.errors import InputError

EXPORT_FORMATS = ("robustbench",)
_NORMALIZATION_KEYS = ("mu", "sigma")
# Keys of the run configuration worth a line in the card, wherever they sit in the TOML tree.
_TRAINING_KEYS = ("method", "aux_mode", "primary", "aux", "test", "model", "epochs", "alpha", "pi",
                  "beta", "warmup_epochs", "eps", "step_size", "steps", "lr", "weight_decay", "batch_size",
                  "aux_batch_size", "seed", "loader", "precision")


@dataclass
class ExportResult:
    out_dir: Path
    weights: Path
    card: Path
    readme: Path


def robustbench_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The primary classifier's weights under RobustBench's WideResNet keys (no mu/sigma/aux heads)."""
    from engine.models import primary_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in primary_state_dict(model).items()
            if k not in _NORMALIZATION_KEYS}


def training_summary(config: dict) -> dict[str, object]:
    """The facts a reader of the card wants (method, aux data, alpha, ...) from the run's config."""
    return {name: value for name, value in flatten(config).items() if name.rsplit(".", 1)[-1] in _TRAINING_KEYS}


def _eval_summary(eval_report: dict) -> dict:
    attacks = eval_report.get("attacks", {})
    return {
        "threat_model": eval_report.get("threat_model", "Linf"),
        "eps": eval_report.get("eps"),
        "n": eval_report.get("n"),
        "clean_acc": eval_report.get("clean_acc"),
        "robust_acc": {name: entry.get("robust_acc") for name, entry in attacks.items()},
        "autoattack_acc": eval_report.get("autoattack_acc"),
        "test": eval_report.get("test"),
        "sanity_warnings": [w.get("code") for w in eval_report.get("sanity_warnings", [])],
    }


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# TensorFlow's per_image_standardization as engine.models.heads computes it, for people without
# biamat-engine (the README's code is executed by tests/test_export.py).
_PER_IMAGE_CODE = [
    "",
    "def standardize(x):  # tf.image.per_image_standardization(255 * x), as the reference AT code",
    "    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # each image: minus its mean,",
    "    var = (x - mean).square().mean(dim=(1, 2, 3), keepdim=True)  # over max(std, 1/(255 sqrt(C*H*W)))",
    "    return (x - mean) / var.clamp_min(1.0 / (x[0].numel() * 255.0**2)).sqrt()",
    "",
    "model = lambda x: net(standardize(x))  # x: (B, 3, 32, 32) in [0, 1] -> logits",
]


def render_readme(card: dict) -> str:
    """The model card as markdown, with the loading code RobustBench users need."""
    arch = card["robustbench_architecture"]
    norm = card["normalization"]
    lines = [
        f"# {card['name']}", "",
        f"WideResNet-{arch['depth']}-{arch['widen_factor']} ({card['num_classes']} classes), "
        f"trained with biamat-engine; exported from `{card['source']}`.", "",
        "## Loading", "",
        "Weights use RobustBench's WideResNet key names. Inputs are float NCHW images in [0, 1]; the",
        "normalisation below is applied in front of the network (it is not folded into `conv1`).", "",
        "```python",
        "import torch",
        "from safetensors.torch import load_file",
        "from robustbench.model_zoo.architectures.wide_resnet import WideResNet",
        "",
        f"net = WideResNet(depth={arch['depth']}, widen_factor={arch['widen_factor']}, "
        f"num_classes={arch['num_classes']})",
        'net.load_state_dict(load_file("model.safetensors"))',
        "net.eval()  # BatchNorm with its running statistics, as the model was evaluated",
        *(_PER_IMAGE_CODE if norm.get("kind") == PER_IMAGE else [
            f"mean = torch.tensor({norm['mean']}).view(1, 3, 1, 1)",
            f"std = torch.tensor({norm['std']}).view(1, 3, 1, 1)",
            "model = lambda x: net((x - mean) / std)  # x: (B, 3, 32, 32) in [0, 1] -> logits",
        ]),
        "```", "",
        "With biamat-engine: `engine.export.load_robustbench_export(DIR)` returns the same classifier.", "",
    ]
    training, started = card.get("training", {}), card.get("started_from")
    if training:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in training.items()]
        lines.append("")
    if started:
        lines += [f"Fine-tuned from `{started['file']}` (epoch {started['epoch']}, sha256 {started['sha256']}), "
                  f"with {'its' if started['heads'] == 'keep' else 'a new'} primary head.", ""]
    evaluation = card.get("evaluation")
    if evaluation:
        lines += [f"## Evaluation (threat model {evaluation['threat_model']}, eps {evaluation['eps']}, "
                  f"n {evaluation['n']})", "", "| attack | accuracy |", "|---|---|",
                  f"| clean | {_percent(evaluation['clean_acc'])} |"]
        lines += [f"| {name} | {_percent(acc)} |" for name, acc in evaluation["robust_acc"].items()]
        if evaluation["sanity_warnings"]:
            lines += ["", f"Sanity warnings during evaluation: {', '.join(evaluation['sanity_warnings'])}."]
        lines.append("")
    else:
        lines += ["## Evaluation", "", "No eval.json in the run directory: run `biamat-engine eval` first.", ""]
    return "\n".join(lines)


def export_robustbench(run: str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False) -> ExportResult:
    """Writes model.safetensors, model.json and README.md for RobustBench into `out_dir`
    (default RUN_DIR/robustbench), which must be absent, empty, or an earlier export with
    `overwrite` (engine/outputs.py), and never the run directory itself (the export's files would replace the run's own model).
    `run` is a run directory or anything `engine.models.load` takes."""
    from safetensors.torch import save_file

    from engine.models import WideResNet, load

    run = Path(run)
    files = RunDir.of(run)
    run_dir = files.root
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "robustbench"
    if out_dir.resolve() == run_dir.resolve():
        raise InputError(f"export --out {out_dir} is the run directory it reads: RobustBench's model.safetensors "
                         "and model.json would replace the run's own; choose another folder "
                         f"(the default is {run_dir / 'robustbench'})")
    # Only export's own earlier export is replaced, and only with --overwrite: never another run's model.
    claim_folder(out_dir, "export", overwrite=overwrite, inputs=[run])
    model = load(run)
    if not isinstance(model, WideResNet):
        raise InputError(f"{run}: only WideResNet classifiers can be exported for RobustBench "
                         f"(this run trained a {type(model).__name__}); its model.safetensors and "
                         "model.json load with engine.models.load")
    # Everything is read and checked before the first file is written.
    weights = robustbench_state_dict(model)
    config = read_config(run_dir).to_dict() if files.config.exists() else {}
    record = read_run_record(files)  # what the run started from; none in a run from before run.json
    eval_report = read_eval_report(files.eval_report) if files.eval_report.exists() else None
    model_json = read_json(files.card) if files.card.exists() else {}
    card = {
        "name": f"biamat-{run_dir.resolve().name}",
        "architecture": f"wrn-{model.depth}-{model.width}",
        "robustbench_architecture": {"class": "WideResNet", "depth": model.depth,
                                     "widen_factor": model.width, "num_classes": model.num_classes,
                                     "sub_block1": False, "input_size": 32},
        "num_classes": model.num_classes,
        "threat_model": "Linf",
        "input": "float NCHW in [0, 1]",
        "normalization": {"kind": model.normalization,
                          "mean": model.mu.flatten().tolist(), "std": model.sigma.flatten().tolist(),
                          "apply": "net(standardize(x))" if model.normalization == PER_IMAGE else "net((x - mean) / std)",
                          "folded_into_conv1": False,
                          "source": model_json.get("normalization_source", "not recorded")},
        "source": str(run),
        "training": training_summary(config),
        "training_config": config,
        "started_from": asdict(record.init) if record is not None and record.init is not None else None,
        "evaluation": _eval_summary(eval_report) if eval_report else None,
    }
    def fill(folder: Path) -> None:  # three files that appear together or not at all
        exported = RunDir(folder)
        save_file(weights, str(exported.weights), metadata={"format": "robustbench-wideresnet"})
        write_json(exported.card, card)
        (folder / "README.md").write_text(render_readme(card))

    publish_folder(out_dir, "export", fill)
    exported = RunDir(out_dir)
    return ExportResult(out_dir, exported.weights, exported.card, out_dir / "README.md")


def load_robustbench_export(out_dir: str | Path) -> nn.Module:
    """The exported classifier rebuilt with biamat-engine: our WideResNet with the card's
    normalisation in its buffers, every other weight from model.safetensors."""
    from safetensors.torch import load_file

    from engine.models.files import build_from_card, load_guarded, safetensors_shapes

    files = RunDir(out_dir)
    card = read_json(files.card)
    norm = card.get("normalization") if isinstance(card, dict) else None
    if not isinstance(norm, dict) or "kind" not in norm:  # an export from before the per-image kind has none
        raise InputError(f"{files.card}: not the card of a RobustBench export (no normalization object with its "
                         "kind); export the run again")
    # Checked like any model card and file (engine/models/files.py) before a tensor is read.
    shapes = {**safetensors_shapes(files.weights), **{k: (1, 3, 1, 1) for k in _NORMALIZATION_KEYS}}  # (1, C, 1, 1) buffers
    model = build_from_card({"architecture": card.get("architecture"), "num_classes": card.get("num_classes"),
                             "mean": norm.get("mean"), "std": norm.get("std"),
                             "normalization": norm["kind"]}, files.card,
                            weights=(shapes, files.weights))
    missing, unexpected = model.load_state_dict(load_guarded(lambda: load_file(str(files.weights)), files.weights),
                                                strict=False)
    if sorted(missing) != sorted(_NORMALIZATION_KEYS) or unexpected:
        raise InputError(f"{files.weights} does not match {card['architecture']}: "
                         f"missing {missing}, unexpected {unexpected}")
    return model.eval()
