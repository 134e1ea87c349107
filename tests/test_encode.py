import json

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from pipeline.data import Document
from pipeline.encode import EMPTY_VECTOR_TERM, encode, encode_texts, quantize, vocabulary_terms
from pipeline.exact_search import sparse_vectors
from pipeline.files import read_jsonl

from conftest import DOCS, QUERIES


def test_quantize_rounds_drops_zeros_and_keeps_rows():
    weights = torch.tensor([[0.0, 0.004, 0.005, 0.015, 1.234], [0.0, 0.0, 0.0, 0.0, 0.0], [2.5, 0.0, 0.0, 0.0, 0.0]])
    terms = ["a", "b", "c", "d", "e"]
    # round half to even, as Python's round: 0.5 -> 0, 1.5 -> 2
    assert quantize(weights, terms, 100) == [{"d": 2, "e": 123}, {}, {"a": 250}]
    assert quantize(weights, terms, 1) == [{"e": 1}, {}, {"a": 2}]


def test_vocabulary_terms_have_no_whitespace_and_are_unique():
    vocab = {"plain": 0, "two words": 1, "tab\there": 2, "": 3, "nbsp\u00a0x": 4, "<U+0020>": 5, "two<U+0020>words": 6,
             EMPTY_VECTOR_TERM: 7, " " * 31: 8, "x" * 244: 9}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="plain")))
    terms = vocabulary_terms(tokenizer, len(vocab) + 1)  # one id beyond the tokenizer, as padded vocabularies
    assert len(terms) == len(vocab) + 1 and len(set(terms)) == len(terms)
    assert all(not any(c.isspace() for c in term) and term for term in terms)
    assert terms[0] == "plain" and terms[1] == "two<U+0020>words" and terms[2] == "tab<U+0009>here"
    assert terms[6] == "two<U+0020>words#6"  # the escaped form of id 1 took this name first
    assert terms[7] == f"{EMPTY_VECTOR_TERM}#7"  # the reserved term never names a vocabulary entry
    assert EMPTY_VECTOR_TERM not in terms
    # Lucene cuts terms at 255 UTF-16 units, weight included: 31 spaces escaped are 248, which gets a short name
    assert terms[8] == "#8" and terms[9] == "x" * 244


def test_default_vocabulary_is_used_verbatim(encoder):
    terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
    assert len(terms) == 30522 and terms[2000] == encoder.tokenizer.convert_ids_to_tokens(2000)


def test_max_pool_before_activation_equals_splade_max(encoder):
    texts = ["a short query", "a much longer document about volcanoes, magma and lava " * 3, "x"]
    batch, _ = encoder.tokenize(texts, max_length=64)
    with torch.inference_mode():
        ours = encoder.model(batch["input_ids"], batch["attention_mask"])
        logits = encoder.model.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    naive = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
    torch.testing.assert_close(ours, naive.amax(dim=1), rtol=1e-5, atol=1e-5)


def test_encode_counts_truncation_and_keeps_empty_documents(model_path, beir_folder, tmp_path):
    out = tmp_path / "encoded"
    stats = encode(model_path, out, dataset=str(beir_folder), max_doc_length=32, batch_size=4)
    docs = {record["id"]: record for record in read_jsonl(out / "docs")}
    assert set(docs) == set(DOCS)
    assert docs["d09"]["vector"] == {EMPTY_VECTOR_TERM: 1}
    assert stats["docs"]["empty"] == 1
    long_docs = [doc_id for doc_id, (title, text) in DOCS.items() if len(encoder_tokens(title, text)) > 32]
    assert stats["docs"]["truncated"] == len(long_docs) > 0
    queries = {record["id"]: record for record in read_jsonl(out / "queries.jsonl")}
    assert set(queries) == set(QUERIES)
    for record in [*docs.values(), *queries.values()]:
        assert all(isinstance(w, int) and w > 0 for w in record["vector"].values())
        assert not any(c.isspace() for term in record["vector"] for c in term)
    assert json.loads((out / "stats.json").read_text())["docs"]["texts"] == len(DOCS)


def test_a_text_the_tokenizer_drops_whole_is_blank(encoder):
    """Zero-width and control characters are not whitespace, but tokenize to nothing: their vector is empty, not
    the model's reading of [CLS] [SEP] (which queries would match)."""
    terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
    texts = ["\u200b\u200b", "glaciers carve valleys", "\x00\x01", "  ", "\u200bglaciers"]
    vectors = {}
    encode_texts(encoder, [Document(str(at), text) for at, text in enumerate(texts)], terms, max_length=32, scale=100,
                 batch_size=8, write=lambda item, vector: vectors.update({item.id: vector}), what="docs")
    assert [bool(vectors[str(at)]) for at in range(len(texts))] == [False, True, False, False, True]
    assert vectors["1"] == quantize(encoder.encode([texts[1]], 32)[0], terms, 100)[0]
    # as k-sweep's exact search reads them
    assert sparse_vectors(encoder, texts, max_length=32).to_dense().count_nonzero(dim=1).bool().tolist() == \
        [False, True, False, False, True]


def encoder_tokens(title, text):
    from transformers import AutoTokenizer

    from conftest import DEFAULT_MODEL

    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)(f"{title} {text}".strip())["input_ids"]


def test_missing_model_path_is_a_clear_error(tmp_path):
    from pipeline.splade.model import ModelNotFoundError, SpladeEncoder

    with pytest.raises(ModelNotFoundError, match="no model at .*make setup"):
        SpladeEncoder.load(tmp_path / "nowhere")
