"""SPLADE training, encoding, Lucene impact indexing (Pyserini/Anserini), search and evaluation."""

import os

# oneDNN (torch's GELU on a CPU) keeps a kernel per tensor shape, up to 1,024 of them, megabytes each.
# Batches of every length up to 256 tokens fill that cache: encoding's peak RSS grew 25 % over 100k
# documents (64 entries: still 20 %). 8 keeps memory flat at no measured cost (a batch's layers share one
# shape). oneDNN reads this at its first use, so it is set before torch computes; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
