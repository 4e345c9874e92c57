"""scripts/paired_verdicts.py: the decision rule of docs/demo-reproduction.md on a study.csv."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_verdicts.py"
_spec = importlib.util.spec_from_file_location("paired_verdicts", SCRIPT)
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


@pytest.mark.parametrize("diffs, said", [
    ([3.0, 4.0, 5.0], "holds"),  # mean 4, SE 0.58
    ([-3.0, -4.0, -5.0], "reversed"),
    ([10.0, -8.0, 2.0], "not resolved"),  # mean 1.3, SE 5.2
    ([1.0], "not resolved (one seed)"),
])
def test_the_two_standard_error_rule(diffs, said):
    assert paired.verdict(diffs)[2] == said


def test_pairs_are_taken_per_seed_from_finished_runs(tmp_path):
    rows = [("at", 0, 1, "0.20"), ("at", 1, 1, "0.30"), ("at", 2, 0, ""),
            ("at-biamat", 0, 1, "0.25"), ("at-biamat", 1, 1, "0.36"), ("at-biamat", 2, 1, "0.90")]
    csv_path = tmp_path / "study.csv"
    csv_path.write_text("study,row,seed,finished,pgd20\n" + "".join(f"amp,{r},{s},{f},{v}\n" for r, s, f, v in rows))
    done = subprocess.run([sys.executable, str(SCRIPT), str(csv_path), "at-biamat:at"], capture_output=True,
                          text=True, check=True)
    line = done.stdout.splitlines()[-1]
    assert "| at-biamat > at | 0, 1 | +5.0, +6.0 | +5.5 | 0.5 | holds |" == line  # seed 2 of at never finished


def test_the_demo_reference_holds_both_arms_on_the_seeds_both_finished(tmp_path):
    spec = importlib.util.spec_from_file_location("fm_reference", SCRIPT.with_name("fashion_mnist_reference.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    rows = [("at", 0, 1, "0.80", "0.50"), ("at", 1, 1, "0.70", "0.40"), ("at", 2, 1, "0.75", "0.45"),
            ("at-biamat", 0, 1, "0.82", "0.53"), ("at-biamat", 1, 1, "0.71", "0.44"), ("at-biamat", 2, 0, "", "")]
    csv_path = tmp_path / "study.csv"
    csv_path.write_text("study,row,seed,finished,clean,pgd20\n"
                        + "".join(f"amp,{r},{s},{f},{c},{p}\n" for r, s, f, c, p in rows))
    made = ref.reference(csv_path, "abc1234", "a test machine")
    assert made["seeds"] == [0, 1]  # seed 2 of AT+BiaMAT never finished
    assert made["arms"]["at"]["pgd20"] == [0.50, 0.40] and made["arms"]["biamat"]["clean"] == [0.82, 0.71]
    assert "holds" in made["verdict"] and "+3.5" in made["verdict"]  # +3 and +4 points: SE 0.5
    from studies.demo import compare_with_study

    assert compare_with_study({}, made, same_setting=True).lines[0].startswith("The study, seeds 0, 1")


def test_a_report_beside_the_study_is_paired_by_the_seed_in_its_folder_name(tmp_path):
    import json

    def report(row: str, seed: int, acc: float, complete: bool = True) -> None:
        (tmp_path / f"{row}-s{seed}").mkdir()
        (tmp_path / f"{row}-s{seed}" / "eval-aa100.json").write_text(json.dumps(
            {"complete": complete, "attacks": {"aa": {"robust_acc": acc}}}))

    for seed, (a, b) in enumerate([(0.40, 0.44), (0.41, 0.46), (0.39, 0.45)]):
        report("at-biamat", seed, a)
        report("at", seed, b)
    report("at-biamat", 3, 0.9, complete=False)  # an interrupted report is no result
    (tmp_path / "at-biamat-s10x").mkdir()  # not a run folder of the row
    done = subprocess.run([sys.executable, str(SCRIPT.with_name("paired_reports.py")), str(tmp_path), "at-biamat",
                           "at", "--report", "eval-aa100.json", "--attack", "aa"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1].endswith("| 0, 1, 2 | -4.0, -5.0, -6.0 | -5.0 | 0.6 | reversed |")
