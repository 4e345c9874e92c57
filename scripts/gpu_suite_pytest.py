"""A pytest plugin for the GPU suite: one JSON line per finished test, flushed as it finishes, in
the file named by $GPU_SUITE_TESTS_JSONL. pytest writes its junit XML only when the session ends,
so a run killed by the machine's time limit would otherwise leave no result of the tests that
did finish; the suite watches this file and republishes its figures as it grows."""

from __future__ import annotations

import json
import os
import time


class _Recorder:
    def __init__(self, path: str):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the session

    def pytest_runtest_logreport(self, report):
        # One line per test: its call phase, or the setup phase when that failed or skipped it.
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            line = {"nodeid": report.nodeid, "outcome": report.outcome, "seconds": round(report.duration, 3),
                    "time": time.time()}
            if report.outcome != "passed":
                text = report.longreprtext or ""
                line["detail"] = text[-2000:]
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()

    def pytest_sessionfinish(self):
        self.file.close()


def pytest_configure(config):
    path = os.environ.get("GPU_SUITE_TESTS_JSONL")
    if path:
        config.pluginmanager.register(_Recorder(path), "gpu-suite-recorder")
