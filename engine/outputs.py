"""Who may replace an output, and how a multi-file output appears: the one rule every writer of
the engine goes through (DESIGN.md, "Outputs").

- A command replaces an existing output only when it wrote it: the proof is a record written
  beside it (`.NAME.biamat.json` for a file, `DIR/.biamat.json` for a folder) naming the
  command and the sha256 of every file, checked before anything is replaced. A file name proves
  nothing: a user's `eval.json` or `demo.json` is still theirs.
- Even then it takes `overwrite` (the command's `--overwrite`, or its documented resume rule).
- An input is never an output (resolved paths and samefile compared).
- A folder output is filled in a temporary folder beside its target and swapped in whole, so a
  kill or a full disk leaves the old folder or the new one.
- `FolderLock`: one process writes a run directory or a study folder at a time (flock on
  `.biamat.lock` inside it; the OS drops it with its holder, so a killed process never leaves a
  stale lock).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from engine.run_dir import (BOOKKEEPING, FOLDER_RECORD, LOCK_NAME, DemoDir, atomic_write, atomic_write_text,
                            output_record)
from loaders.processes import pid_alive
from loaders.sources.base import sha256_files

T = TypeVar("T")


class OutputRefused(FileExistsError):
    """An output this command may not write: not its own, an input, or its own without --overwrite."""


class FolderInUse(OSError):
    """Another live process holds the folder's lock."""


# -- the record ---------------------------------------------------------------------------------

def _read_record(record: Path) -> dict | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def _write_record(record: Path, command: str, hashes: dict[str, list[str]]) -> None:
    atomic_write_text(record, json.dumps({"written_by": f"biamat-engine {command}", "files": hashes}, indent=2) + "\n")


def _owner_problem(record: Path, command: str, files: Iterable[Path]) -> str | None:
    """Why the existing `files` are not this command's own output, or None when they are."""
    data = _read_record(record)
    if data is None:
        return "no record says biamat-engine wrote it"
    if data.get("written_by") != f"biamat-engine {command}":
        return f"it was written by `{data.get('written_by')}`, not `biamat-engine {command}`"
    for path in files:
        if path.exists() and sha256_files([path]) not in data["files"].get(path.name, []):
            return f"{path.name} changed since `biamat-engine {command}` wrote it"
    return None


def _check_not_input(outputs: Sequence[Path], inputs: Iterable[str | Path]) -> None:
    for given in inputs:
        source = Path(given)
        for out in outputs:
            same = out.resolve() == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source))
            if same:
                raise OutputRefused(f"{out} is an input of this command ({given}): writing it would destroy what "
                                    "is being read; choose another output path")


def claim_files(paths: Sequence[str | Path], command: str, *, overwrite: bool, inputs: Iterable[str | Path] = (),
                option: str = "--out") -> bool:
    """Raises OutputRefused unless `command` may write `paths` (one output: a file and the files
    published with it, recorded together beside the first). Returns True when an earlier output
    of the command is there (and `overwrite` lets it be replaced)."""
    paths = [Path(p) for p in paths]
    _check_not_input(paths, inputs)
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if not existing:
        return False
    for path in existing:
        if path.is_dir():
            raise OutputRefused(f"{path} is a folder, not a file: choose another {option}")
    problem = _owner_problem(output_record(paths[0]), command, existing)
    if problem:
        raise OutputRefused(f"{existing[0]} already exists and {problem}: this command never replaces what it "
                            f"did not write; choose another {option}, or move the file away yourself")
    if not overwrite:
        raise OutputRefused(f"{existing[0]} is an earlier output of `biamat-engine {command}`: pass --overwrite "
                            f"to replace it, or choose another {option}")
    return True


def record_files(paths: Sequence[str | Path], command: str) -> None:
    """Records `paths` (written whole) as `command`'s output."""
    paths = [Path(p) for p in paths]
    _write_record(output_record(paths[0]), command, {p.name: [sha256_files([p])] for p in paths if p.exists()})


def publish_file(path: str | Path, command: str, write: Callable[[str], Any]) -> None:
    """`atomic_write` of a single-file output, with its record. The record accepts the old and
    the new content while the rename happens, so a kill at any point leaves a file the command
    still recognises as its own."""
    path = Path(path)
    record = output_record(path)

    def write_and_record(tmp: str) -> None:
        write(tmp)
        old = _read_record(record)
        kept = old["files"].get(path.name, []) if old and old.get("written_by") == f"biamat-engine {command}" else []
        _write_record(record, command, {path.name: [*kept[-1:], sha256_files([tmp])]})

    atomic_write(path, write_and_record)
    _write_record(record, command, {path.name: [sha256_files([path])]})


def write_json_output(path: str | Path, command: str, data: Any) -> None:
    """An indented JSON report, published with its record (see publish_file)."""
    text = json.dumps(data, indent=2) + "\n"
    publish_file(path, command, lambda tmp: Path(tmp).write_text(text))


# -- folders -----------------------------------------------------------------------------------

def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in BOOKKEEPING)


def claim_folder(folder: str | Path, command: str, *, overwrite: bool, inputs: Iterable[str | Path] = (),
                 option: str = "--out") -> bool:
    """Raises OutputRefused unless `command` may fill `folder`: absent, empty, or its own earlier
    output (every file in it recorded with its hash) and `overwrite`. Returns True for the last."""
    folder = Path(folder)
    _check_not_input([folder], inputs)
    for given in inputs:  # writing into a folder that holds an input would put the output among its data
        if folder.exists() and Path(given).exists() and Path(given).resolve().is_relative_to(folder.resolve()):
            raise OutputRefused(f"{folder} holds an input of this command ({given}): choose another {option}")
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{folder} is a file, not a folder: choose another {option}")
    entries = _entries(folder) if folder.is_dir() else []
    if not entries:
        return False
    files = [folder / name for name in entries]
    data = _read_record(folder / FOLDER_RECORD)
    problem = _owner_problem(folder / FOLDER_RECORD, command, [p for p in files if p.is_file()])
    if problem is None and data is not None:
        strangers = [name for name in entries if name not in data["files"]]
        if strangers:
            problem = f"{', '.join(strangers[:6])} in it {'is' if len(strangers) == 1 else 'are'} not part of it"
    if problem:
        shown = ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")
        raise OutputRefused(f"{folder} already holds {shown} and {problem}: this command never replaces what it "
                            f"did not write; choose another {option}")
    if not overwrite:
        raise OutputRefused(f"{folder} is an earlier output of `biamat-engine {command}`: pass --overwrite to "
                            f"replace it, or choose another {option}")
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary folders of writers that were killed (the pid in the name is gone)."""
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        pid = tmp.name[len(folder.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


    return True


def publish_folder(folder: str | Path, command: str, fill: Callable[[Path], T]) -> T:
    """Calls `fill(tmp)` on a fresh folder beside `folder`, records every file it wrote, then
    puts it in `folder`'s place in one rename (an earlier folder is swapped out and removed).
    Claim the folder first (claim_folder). An error or a kill leaves the previous folder as it
    was; the next publish removes a killed writer's temporary folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}-", suffix=".tmp", dir=folder.parent))
    try:
        result = fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the published folder private
        _write_record(tmp / FOLDER_RECORD, command, {p.name: [sha256_files([p])] for p in sorted(tmp.iterdir())
                                                     if p.is_file() and p.name not in BOOKKEEPING})
        if not folder.exists():
            os.rename(tmp, folder)
            return result
        if not _exchange(tmp, folder):
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}-", suffix=".tmp", dir=folder.parent))
            os.rename(folder, old / folder.name)
            os.rename(tmp, folder)
            tmp = old
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- one writer per folder ---------------------------------------------------------------------

class FolderLock:
    """An exclusive lock on `folder` (created if absent) for as long as this process writes it.

    flock on `folder/.biamat.lock`, with the holder's pid written into the file after locking so
    that a refused process can name it. The OS releases the lock when its holder exits, however
    it exits, so there is never a stale lock to clean up."""

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.created = False
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd, self.created = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderInUse(f"{self.folder} is in use: process {holder} is writing this {self.what}; wait "
                                  "for it to finish (or stop it) and run again, or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that discarded its lock file (release(discard=True)) unlinked the file this
            # descriptor was opened on: lock the file that is there now instead.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, discard: bool = False) -> None:
        """Drops the lock; with `discard`, also the lock file when this lock created it (a
        command that wrote nothing leaves no file behind)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if discard and self.created:
                self.path.unlink(missing_ok=True)
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, kind: object, *exc: object) -> None:
        self.release(discard=kind is not None)  # a command that failed leaves no lock file it made

    def __del__(self) -> None:
        self.release()


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """A descriptor on the lock file, and whether this call created it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, os.O_RDWR), False


# -- the demo's folder -------------------------------------------------------------------------

def claim_demo(demo: DemoDir, arms: tuple[str, ...]) -> None:
    """The demo writes into a folder that is new, empty, or its own: demo.json recorded as the
    demo's (not merely a file of that name) and nothing in it but what a demo writes."""
    root = demo.root
    if root.exists() and not root.is_dir():
        raise OutputRefused(f"{root} is a file; pick another --out for the demo")
    entries = _entries(root) if root.is_dir() else []
    if not entries:
        return
    fix = "pick another --out (the demo replaces only its own earlier results)"
    if not demo.summary.is_file():
        raise OutputRefused(f"{root} is not empty and holds no {demo.summary.name}, so it is not a demo's output; {fix}")
    problem = _owner_problem(output_record(demo.summary), "demo", [demo.summary])
    strangers = [name for name in entries if name not in demo.names(arms)]
    if problem is None and strangers:
        problem = f"{', '.join(strangers[:6])} in it {'is' if len(strangers) == 1 else 'are'} not a demo's"
    if problem:
        raise OutputRefused(f"{demo.summary} is there but {problem}; {fix}")


# -- .beton outputs (prepare, robustify, pseudo-label) -----------------------------------------

def beton_files(out: str | Path) -> list[Path]:
    """A .beton and its manifest: one output, recorded together."""
    from loaders.beton import manifest_path

    return [Path(out), manifest_path(out)]


def claim_beton(out: str | Path, command: str, *, overwrite: bool, inputs: Iterable[str | Path] = ()) -> bool:
    """claim_files for OUT.beton and OUT.beton.json; `inputs` that are not paths are ignored."""
    return claim_files(beton_files(out), command, overwrite=overwrite, inputs=_paths(inputs), option="OUT")


def record_beton(out: str | Path, command: str) -> None:
    record_files(beton_files(out), command)


def _paths(inputs: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in inputs if str(p) and Path(p).exists()]
