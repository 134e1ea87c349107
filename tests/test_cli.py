import subprocess
import sys

from conftest import ROOT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT)


def test_unknown_dataset_is_one_line_not_a_traceback(tmp_path):
    result = run_cli("search", "--index", str(tmp_path), "--dataset", "beir/unknown", "--run", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown dataset 'beir/unknown'") and "Traceback" not in result.stderr


def test_malformed_corpus_line_through_the_cli(tmp_path):
    from conftest import write_beir_folder

    folder = write_beir_folder(tmp_path / "beir")
    (folder / "corpus.jsonl").write_text('{"_id": "a", "text": "fine"}\nnot json\n')
    result = run_cli("index", "--corpus", str(folder), "--out", str(tmp_path / "index"))
    assert result.returncode == 2
    assert f"{folder / 'corpus.jsonl'}:2: malformed JSON" in result.stderr
