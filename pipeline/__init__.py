"""SPLADE training, encoding, Lucene impact indexing (Pyserini/Anserini), search and evaluation."""
