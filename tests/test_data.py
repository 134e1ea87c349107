import json

import pytest

from pipeline import data
from pipeline.data import DataError

from conftest import DOCS, write_beir_folder

APPENDED = len(DOCS) + 1  # the line a test appends to the corpus


def test_scifact_from_the_seeded_cache():
    scifact = data.load("scifact")
    assert scifact.name == "beir/scifact/test"
    assert scifact.docs_count() == 5183
    assert len(scifact.queries()) == 300
    assert sum(len(docs) for docs in scifact.qrels().values()) == 339
    first = next(scifact.docs())
    assert first.id and first.text  # title + " " + text


def test_short_names_and_ids_resolve():
    assert data.load("beir/scifact/train").name == "beir/scifact/train"
    # TREC DL passages are judged 0-3 (1 "related"): grade 2 counts, by whichever id they are named
    for name in ("dl19", "dl20", "msmarco-passage/trec-dl-2019", "msmarco-passage/trec-dl-2020/judged",
                 "msmarco-passage/trec-dl-hard"):
        assert data.load(name).relevance_level == 2, name
    assert data.load("msmarco-dev").relevance_level == data.load("scifact").relevance_level == 1
    assert data.load("msmarco-dev").name == "msmarco-passage/dev/small"
    assert not data.load("msmarco-dev").queries_are_documents
    assert data.load("scifact").queries_are_documents and data.load("beir/cqadupstack/android").queries_are_documents
    assert not data.load("beir/msmarco/dev").queries_are_documents


def test_unknown_dataset_lists_accepted_forms():
    with pytest.raises(DataError, match="unknown dataset 'beir/nope'.*short name.*ir_datasets id.*BEIR folder"):
        data.load("beir/nope")


def test_folder_missing_files_is_named(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(DataError, match="missing queries.jsonl, qrels/test.tsv"):
        data.load(str(tmp_path))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    folder = write_beir_folder(tmp_path)
    with open(folder / "corpus.jsonl", "a") as out:
        out.write('{"_id": "broken", "text": \n')
    with pytest.raises(DataError, match=rf"corpus.jsonl:{APPENDED}: malformed JSON"):
        list(data.load(str(folder)).docs())


def test_row_without_id_names_file_and_line(tmp_path):
    folder = write_beir_folder(tmp_path)
    with open(folder / "corpus.jsonl", "a") as out:
        out.write(json.dumps({"title": "no id", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=rf"corpus.jsonl:{APPENDED}: expected a JSON object with keys \['_id'\]"):
        list(data.load(str(folder)).docs())


def test_duplicate_document_id_names_both_lines(tmp_path):
    folder = write_beir_folder(tmp_path)
    with open(folder / "corpus.jsonl", "a") as out:
        out.write(json.dumps({"_id": "d03", "title": "", "text": "again"}) + "\n")
    with pytest.raises(DataError, match=rf"corpus.jsonl:{APPENDED}: duplicate document id 'd03' \(first at .*corpus.jsonl:3\)"):
        list(data.load(str(folder)).docs())


def test_malformed_qrels_line_is_named(tmp_path):
    folder = write_beir_folder(tmp_path)
    with open(folder / "qrels" / "test.tsv", "a") as out:
        out.write("q1\td01\n")
    with pytest.raises(DataError, match=r"test.tsv:9: expected 'query-id<TAB>corpus-id<TAB>score'"):
        data.load(str(folder)).qrels()


def test_empty_document_is_kept_with_empty_text(beir_folder):
    docs = {doc.id: doc.text for doc in data.load(str(beir_folder)).docs()}
    assert docs["d09"] == "" and docs["d01"].startswith("Coffee Caffeine")


@pytest.mark.parametrize("line", ['{"a": 1, "a": 2}', '{"t": NaN, "u": -Infinity}', '{"t": "\\ud800 lone"}',
                                  '{"x": [1.5, "caf\\u00e9", null, true], "y": {"z": -0.0}}'])
def test_json_records_read_as_the_standard_library_reads_them(line):
    """orjson reads records, and the standard library what orjson refuses: the same values either way."""
    from pipeline.files import json_object

    assert repr(json_object("f:1", line)) == repr(json.loads(line))


def test_malformed_json_record_is_explained_by_the_standard_library():
    from pipeline.files import json_object

    with pytest.raises(DataError, match=r"^f:3: malformed JSON \(Expecting ',' delimiter at column 9\)$"):
        json_object("f:3", '{"a": 1 "b": 2}')
