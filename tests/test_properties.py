"""Property-based tests: arbitrary Unicode texts and ids through the readers, the quantization and the
term escaping come back unchanged (or as documented), or are refused with a clear error; never lost."""

from __future__ import annotations

import json
import math
import os
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from pipeline import data
from pipeline.encode import EMPTY_VECTOR_TERM, quantize, vocabulary_terms
from pipeline.errors import PipelineError
from pipeline.eval import ranked_run, read_run
from pipeline.search import trec_order

from conftest import write_beir_folder, write_trec

# Every code point, lone surrogates (legal in JSON as \ud800) and control characters included.
ANY_CHAR = st.characters(exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=30)
ID = st.one_of(st.text(ANY_CHAR, max_size=6), st.text("abc123-_.", min_size=1, max_size=6))  # mostly valid ones too
# Derandomized so that a CI run repeats; HYPOTHESIS_EXAMPLES=3000 explores further by hand.
SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 30)), derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def valid_id(value: str) -> bool:
    """The README's rule: one word of printable characters (no whitespace, control character or lone surrogate)."""
    return bool(value) and not any(c.isspace() or unicodedata.category(c) in ("Cc", "Cs") for c in value)


def fixed(text: str) -> str:
    """The README's handling of a text: each lone surrogate becomes U+FFFD."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)


def expected_text(title: str, text: str) -> str:
    """A document's text: title and text, stripped, joined by a space."""
    return " ".join(part.strip() for part in (fixed(title), fixed(text)) if part.strip())


@SETTINGS
@given(docs=st.lists(st.tuples(ID, TEXT, TEXT), min_size=1, max_size=5), queries=st.lists(st.tuples(ID, TEXT), min_size=1, max_size=4))
def test_beir_folder_round_trips_or_is_refused(docs, queries):
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_beir_folder(Path(tmp), docs={d: (t, x) for d, t, x in docs}, queries=dict(queries),
                                   qrels={queries[0][0]: {docs[0][0]: 1}})
        dataset = data.load(str(folder))
        unique_docs = {d: (t, x) for d, t, x in docs}
        try:
            read = list(dataset.docs())
        except data.DataError as err:
            assert any(not valid_id(d) for d in unique_docs), err
            assert "corpus.jsonl:" in str(err)
        else:
            assert [doc.id for doc in read] == list(unique_docs)
            assert all(doc.text == expected_text(*unique_docs[doc.id]) for doc in read)
            for doc in read:
                doc.text.encode("utf-8")  # raises on a lone surrogate
        try:
            read_queries = dataset.queries()
        except data.DataError as err:
            assert any(not valid_id(q) for q in dict(queries)), err
        else:
            assert read_queries == {q: fixed(text) for q, text in dict(queries).items()}


def judgments_as_written(text: str) -> dict[str, dict[str, int]] | None:
    """What a qrels text holds by the README's rule (lines split on LF, fields on whitespace, so an id
    holding whitespace shifts the columns as it would for trec_eval); None where it must be refused."""
    if any(unicodedata.category(c) == "Cs" for c in text):
        return None  # not UTF-8
    judged: dict[str, dict[str, int]] = {}
    for line in text.split("\n"):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not valid_id(fields[0]) or not valid_id(fields[2]):
            return None
        try:
            grade = int(fields[3])
        except ValueError:
            return None
        if judged.setdefault(fields[0], {}).setdefault(fields[2], grade) != grade:
            return None
    return judged or None


@SETTINGS
@given(judgments=st.lists(st.tuples(ID, ID, st.integers(-3, 3)), min_size=1, max_size=6))
def test_trec_qrels_round_trip_or_are_refused(judgments):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qrels.txt"
        text = "".join(f"{q} 0 {d} {g}\n" for q, d, g in judgments)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        expected = judgments_as_written(text)
        if all(valid_id(q) and valid_id(d) for q, d, _ in judgments) and expected is not None:
            assert expected == _first_grades(judgments)  # the oracle itself: valid ids read back as written
        try:
            qrels = data.read_trec_qrels(path)
        except data.DataError as err:
            assert expected is None and ("qrels.txt:" in str(err) or "no judgments" in str(err)), err
        else:
            assert qrels == expected


def _first_grades(judgments: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    first: dict[str, dict[str, int]] = {}
    for q, d, g in judgments:
        first.setdefault(q, {}).setdefault(d, g)
    return first


@SETTINGS
@given(hits=st.dictionaries(st.text("q0123456789", min_size=1, max_size=3),
                            st.dictionaries(st.text("dD0123456789-", min_size=1, max_size=4),
                                            st.integers(0, 20).map(float), min_size=1, max_size=6),
                            min_size=1, max_size=4))
def test_runs_round_trip_in_trec_eval_order(hits):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.trec"
        write_trec({q: list(ranking.items()) for q, ranking in hits.items()}, path, "tag")
        run = ranked_run(read_run(path), "run")
        for qid, ranking in hits.items():
            ours = sorted(run[qid], key=run[qid].get, reverse=True)
            assert ours == [docid for docid, _ in trec_order(list(ranking.items()))]


@SETTINGS
@given(rows=st.lists(st.lists(st.floats(0, 12, width=32), min_size=5, max_size=5), min_size=1, max_size=4),
       scale=st.floats(1e-3, 1e4))
def test_quantize_keeps_every_nonzero_weight(rows, scale):
    weights = torch.tensor(rows, dtype=torch.float32)
    terms = ["a", "b", "c", "d", "e"]
    vectors = quantize(weights, terms, scale)
    assert len(vectors) == len(rows)
    for row, vector in zip(rows, vectors):
        expected = {term: round(float(np.float32(w) * np.float32(scale))) for term, w in zip(terms, row)}
        assert vector == {term: value for term, value in expected.items() if value}
        assert all(type(value) is int and value > 0 for value in vector.values())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_quantize_refuses_weights_that_are_not_finite(bad):
    with pytest.raises(PipelineError, match="not finite"):
        quantize(torch.tensor([[1.0, bad]]), ["a", "b"], 100)


def test_quantize_refuses_a_scale_lucene_cannot_store():
    with pytest.raises(PipelineError, match="more than 2\\^31 - 1"):
        quantize(torch.tensor([[1.5, 1.0]]), ["a", "b"], 1e9)
    assert quantize(torch.tensor([[1.0, 1.0]]), ["a", "b"], 1e9) == [{"a": 10**9, "b": 10**9}]  # 2e9 < 2^31


@SETTINGS
@given(tokens=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=8), min_size=1, max_size=12, unique=True))
def test_vocabulary_terms_are_unique_whitespace_free_and_keep_plain_tokens(tokens):
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=tokens[0])))
    terms = vocabulary_terms(tokenizer, len(tokens))
    assert len(set(terms)) == len(terms) == len(tokens)
    assert all(term and not any(c.isspace() for c in term) for term in terms)
    assert EMPTY_VECTOR_TERM not in terms
    for term in terms:
        assert json.loads(json.dumps(term, ensure_ascii=False).encode("utf-8")) == term
    # A plain token keeps its name unless an escaped or reserved name took it first.
    for token, term in zip(tokens, terms):
        if token and not any(c.isspace() for c in token) and token != EMPTY_VECTOR_TERM:
            assert term == token or term.startswith(token + "#")


def test_every_character_anserini_splits_on_is_escaped():
    """Anserini's -pretokenized vectors are split by Lucene's WhitespaceTokenizer (Java's
    Character.isWhitespace): each such character must be one that vocabulary_terms escapes."""
    from pipeline.lucene import start_jvm

    character = start_jvm()("java.lang.Character")
    splits = [code for code in range(0x10000) if character.isWhitespace(code)]
    assert splits and all(chr(code).isspace() for code in splits)
