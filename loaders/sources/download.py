"""Fetches the openly published CIFAR and SVHN files and verifies their MD5 checksums.

Written against the publishers' URLs and checksums (the same ones torchvision lists); the
download itself has not been exercised from the development machine, which has no route to
those hosts. The checksum check is tested on local files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from loaders.sources.base import SourceError

log = logging.getLogger(__name__)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    found = md5_of(path)
    if found != md5:
        raise SourceError(f"{path}: MD5 {found} does not match the published {md5}; delete it and download again")


def download(url: str, dest: Path, md5: str) -> Path:
    """`dest` with the published checksum: reused when already there, else downloaded to a
    temporary file, verified, then renamed into place."""
    dest = Path(dest)
    if dest.is_file():
        verify_md5(dest, md5)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        log.info("downloading %s -> %s", url, dest)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        verify_md5(Path(tmp), md5)
        os.replace(tmp, dest)
    except OSError as err:
        raise SourceError(f"{url}: download failed ({err}); fetch it by hand into {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
