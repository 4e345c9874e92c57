"""Places365-Standard, small-image release (256x256), resized to 32 or 64 with antialiasing.

Two layouts are accepted:
- class folders (the "easy format": `train/<class>/...jpg`, `val/<class>/...jpg`);
- the file lists with the image archives: `categories_places365.txt` (`/a/airfield 0`),
  `places365_train_standard.txt` (`/a/airfield/00000001.jpg 0`) over `data_256/` and
  `places365_val.txt` (`Places365_val_00000001.jpg 165`) over `val_256/`.
"""

from __future__ import annotations

from pathlib import Path

from loaders.sources.base import ChunkedSource, SourceError, read_text_lines
from loaders.sources.imagefolder import read_imagefolder, stream_images

WHERE_TO_GET = "http://places2.csail.mit.edu/download.html (Places365-Standard, small images 256x256)"
LISTS = {"train": "places365_train_standard.txt", "test": "places365_val.txt"}
IMAGE_ROOTS = {"train": ["data_256", "train_256", "places365_standard/train", ""], "test": ["val_256", "val", ""]}
NUM_CLASSES = 365


def _read_categories(path: Path) -> list[str]:
    names: dict[int, str] = {}
    for number, line in enumerate(read_text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise SourceError(f"{path}:{number}: expected '/a/class_name INDEX', found {line!r}")
        names[int(parts[1])] = parts[0].strip("/").split("/", 1)[-1].replace("/", "-")
    if sorted(names) != list(range(len(names))) or len(names) != NUM_CLASSES:
        raise SourceError(f"{path}: expected {NUM_CLASSES} classes indexed 0..{NUM_CLASSES - 1}, found {len(names)}")
    return [names[i] for i in range(len(names))]


def _read_list(source: Path, split: str, num_classes: int) -> tuple[Path, list[tuple[Path, int]]]:
    list_path = source / LISTS[split]
    roots = [source / r for r in IMAGE_ROOTS[split] if (source / r).is_dir()]
    files = []
    for number, line in enumerate(read_text_lines(list_path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise SourceError(f"{list_path}:{number}: expected 'RELATIVE/PATH.jpg LABEL', found {line!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise SourceError(f"{list_path}:{number}: label {label} outside [0, {num_classes})")
        rel = parts[0].lstrip("/")
        if ".." in Path(rel).parts:
            # A list is data, not a licence to read anywhere: every image lies under the source.
            raise SourceError(f"{list_path}:{number}: {rel!r} leaves the source folder {source}; "
                              "entries are paths below it")
        path = next((r / rel for r in roots if (r / rel).is_file()), None)
        if path is None:
            raise SourceError(f"{list_path}:{number}: image {rel} not found under {', '.join(map(str, roots))}")
        files.append((path, label))
    if not files:
        raise SourceError(f"{list_path}: the file list is empty")
    return (roots[0] if roots else source), files


def read_places365(
    source: str | Path, split: str = "train", *, size: int = 32, skip_bad: bool = False, workers: int = 1,
) -> ChunkedSource:
    source = Path(source)
    if split not in LISTS:
        raise SourceError(f"places365: split must be 'train' or 'test' (the val set), got {split!r}")
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder; get Places365 from {WHERE_TO_GET}")
    if (source / LISTS[split]).is_file():
        categories = source / "categories_places365.txt"
        if not categories.is_file():
            raise SourceError(f"{categories}: missing; it ships with the file lists ({WHERE_TO_GET})")
        class_names = _read_categories(categories)
        root, files = _read_list(source, split, len(class_names))
        return stream_images(files, class_names, size, f"places365-{split}", root,
                             skip_bad=skip_bad, workers=workers, meta={"split": split, "layout": "file list"})
    folder_split = {"train": "train", "test": "val"}[split]
    root = source / folder_split if (source / folder_split).is_dir() else source
    data = read_imagefolder(root, split, size=size, skip_bad=skip_bad, workers=workers)
    if data.num_classes != NUM_CLASSES:
        raise SourceError(f"{root}: expected {NUM_CLASSES} class folders for Places365, found {data.num_classes}")
    data.name = f"places365-{split}"
    data.meta["layout"] = "class folders"
    return data
