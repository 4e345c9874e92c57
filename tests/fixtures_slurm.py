"""A fake Slurm on PATH for the study's Slurm path: `sbatch`, `squeue`, `sacct`, `scontrol` and
`srun` as one small Python script that records what was submitted in a JSON state file and
answers as Slurm does. Nothing runs on submission; the test plays the cluster with
`FakeSlurm.run_task`, which runs an array task's script as Slurm would (its SLURM_* environment)
and refuses one whose `afterok` dependencies have not completed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r'''#!PYTHON
import json, os, re, sys
from pathlib import Path

state_file = Path(os.environ["FAKE_SLURM"]) / "state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {"next": 1000, "jobs": {}}
command, args = Path(sys.argv[0]).name, sys.argv[1:]

def save():
    state_file.write_text(json.dumps(state, indent=1))

if command == "sbatch":
    text = Path(args[-1]).read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
    size = int(options["array"].split("-")[1].split("%")[0]) + 1 if "array" in options else None
    job = str(state["next"]); state["next"] += 1
    tasks = [f"{job}_{i}" for i in range(size)] if size else [job]
    state["jobs"][job] = {"script": text, "options": options, "tasks": {t: "PENDING" for t in tasks},
                          "requeued": []}
    save()
    print(f"Submitted batch job {job}")
elif command in ("sacct", "squeue"):
    wanted = args[args.index("-j") + 1].split(",") if "-j" in args else list(state["jobs"])
    for job in wanted:
        for task, st in state["jobs"].get(job.split("_")[0], {}).get("tasks", {}).items():
            print(f"{task}|{st}")
elif command == "scontrol" and args[0] == "requeue":
    job = state["jobs"][args[1].split("_")[0]]
    job["tasks"][args[1]] = "PENDING"
    job["requeued"].append(args[1])
    save()
elif command == "srun":
    while args and args[0].startswith("-"):  # srun's options, some with a value
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            args.pop(0)
    (Path(os.environ["FAKE_SLURM"]) / "task.pid").write_text(str(os.getpid()))
    os.execvp(args[0], args)
else:
    sys.exit(f"fake slurm: {command} {args} not supported")
'''


class FakeSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        script = self.bin / "fake-slurm"
        script.write_text(SCRIPT.replace("PYTHON", sys.executable))
        script.chmod(0o755)
        for name in ("sbatch", "squeue", "sacct", "scontrol", "srun"):
            (self.bin / name).symlink_to(script)

    @property
    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())

    def set_state(self, task: str, value: str) -> None:
        state = self.state
        state["jobs"][task.split("_")[0]]["tasks"][task] = value
        (self.root / "state.json").write_text(json.dumps(state))

    def start_task(self, task: str) -> subprocess.Popen:
        """Starts job `task` (JOB, or JOB_I for an array task) as Slurm would, after checking its dependencies."""
        job_id, _, index = task.partition("_")
        job = self.state["jobs"][job_id]
        for needed in re.findall(r"\d+", job["options"].get("dependency", "")):
            states = set(self.state["jobs"][needed]["tasks"].values())
            assert states == {"COMPLETED"}, f"{task} started before its dependency {needed} completed: {states}"
        self.set_state(task, "RUNNING")
        script = self.root / f"{task}.sh"
        script.write_text(job["script"])
        array = {"SLURM_ARRAY_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": index} if index else {}
        env = {**os.environ, "SLURM_JOB_ID": str(9000 + int(index or 0)) if index else job_id, **array,
               "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
               "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost"}
        (self.root / "task.pid").unlink(missing_ok=True)
        return subprocess.Popen(["bash", str(script)], env=env)

    def finish(self, task: str, process: subprocess.Popen) -> int:
        code = process.wait(timeout=300)
        if self.state["jobs"][task.split("_")[0]]["tasks"][task] == "RUNNING":  # not requeued meanwhile
            self.set_state(task, "COMPLETED" if code == 0 else "FAILED")
        return code

    def run_task(self, task: str) -> int:
        return self.finish(task, self.start_task(task))

    def task_pid(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not (self.root / "task.pid").exists():
            assert time.monotonic() < deadline, "the task's srun never started"
            time.sleep(0.05)
        return int((self.root / "task.pid").read_text())


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    slurm = FakeSlurm(tmp_path / "fake-slurm")
    monkeypatch.setenv("FAKE_SLURM", str(slurm.root))
    monkeypatch.setenv("PATH", f"{slurm.bin}{os.pathsep}{os.environ['PATH']}")
    return slurm
