# Staged SPLADE pipeline. Each stage target is one `python -m pipeline <stage>` call and is skipped
# when its outputs are newer than its inputs. `make beir-eval` runs everything from a fresh clone.
SHELL := /bin/bash
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH ?= torch==2.13.0
MODEL ?= models/splade-tiny
DATASETS ?= scifact
THREADS ?= $(shell nproc)
BATCH_SIZE ?= 32
BODY_PRECISION ?= fp32
JAVA_HEAP ?= 4g
IR_DATASETS_SEED ?= ../shared/ir_datasets
IR_DATASETS_HOME ?= $(CURDIR)/.cache/ir_datasets

export IR_DATASETS_HOME
export PIPELINE_IR_DATASETS_SEED := $(IR_DATASETS_SEED)
export PIPELINE_JAVA_HEAP := $(JAVA_HEAP)
export PYTHONUNBUFFERED := 1

PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
DEFAULT_MODEL := models/splade-tiny
# Outputs are named after the model: models/NAME -> NAME, ORG/NAME (a hub id) -> ORG--NAME, /PATH -> PATH with
# "--" for "/" (no leading "--", which a command line would take for an option).
tag = $(subst /,--,$(patsubst models/%,%,$(patsubst ./%,%,$(patsubst /%,%,$(patsubst %/,%,$(1))))))
TAG := $(call tag,$(MODEL))
# A local model's files are inputs Make tracks; a hub id is not.
# The default model and the one `make train` writes (OUT) are built when missing.
model_input = $(if $(filter $(DEFAULT_MODEL) $(OUT),$(1)),$(1)/model.safetensors,$(wildcard $(1)/config.json $(1)/*.safetensors))
# Output folder of a dataset: its name with "/" as "-" (scifact, beir-arguana, my-corpus).
slug = $(subst /,-,$(patsubst ./%,%,$(patsubst /%,%,$(patsubst %/,%,$(1)))))
# Other models (paths or ids) whose runs `eval` puts beside MODEL's, e.g. COMPARE=models/splade-tiny.
COMPARE ?=
EVAL_NAME = $(TAG)$(foreach model,$(COMPARE),+$(call tag,$(model)))

# Training (`make train`, `make ablation`): the model to start from, the data, the dataset whose BM25
# index gives hard negatives, and the output folder (then `make beir-eval MODEL=$(OUT)`).
BASE ?= $(DEFAULT_MODEL)
TRAIN_DATA ?= beir/scifact/train
NEGATIVES ?= scifact
OUT ?= models/trained
TRAIN_ARGS ?=
ABLATION_ARGS ?=
# `make k-sweep`: e.g. K_SWEEP_ARGS="--surrogate dense" (runs/k-sweep-dense.*), "--steps 100 --seeds 5" (longer).
K_SWEEP_ARGS ?=
# A model whose training collapsed (its folder holds collapse.json) is refused by encode unless set.
ACCEPT_COLLAPSED ?=

.PHONY: help setup jvm-archive fetch-model encode index search eval beir-eval head-stats train ablation k-sweep report bench search-bench test clean
help:
	@echo "make setup | beir-eval [MODEL=... DATASETS='scifact nfcorpus ...' COMPARE=...] | encode | index | search | eval"
	@echo "  a corpus is encoded and indexed once for all its datasets: DATASETS='msmarco-dev dl19 dl20' share indexes/msmarco-passage/"
	@echo "make index CORPUS=path [MODEL=...]   your own corpus (JSON lines: _id/title/text or id/contents; id<TAB>text TSV; .gz; a file or folder)"
	@echo "make train [MODEL=... OUT=models/trained TRAIN_ARGS='--steps 200'] | head-stats [RESCALE=16|auto] | ablation | test"
	@echo "make k-sweep [K_SWEEP_ARGS='--surrogate dense' | '--steps 100 --seeds 5'] | report (runs/report.md from what runs/ holds)"

setup: $(SETUP) $(DEFAULT_MODEL)/model.safetensors

$(SETUP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pipeline jvm-archive || echo "warning: no JVM class archive; each JVM loads its classes from the jar (~0.3 s more)"
	touch $@

# The JVM's class-data archive (a speed-up only), built again by hand; setup builds it with each install.
jvm-archive: | $(SETUP)
	$(PY) -m pipeline jvm-archive

fetch-model: $(DEFAULT_MODEL)/model.safetensors
$(DEFAULT_MODEL)/model.safetensors: | $(SETUP)
	$(PY) -m pipeline fetch-model --out $(DEFAULT_MODEL)

# Datasets over one corpus (MS MARCO dev, DL19, DL20; the splits of a BEIR corpus) share its encoding
# and its indexes: `python -m pipeline corpus` names each dataset's corpus (corpus.DATASET), asked once
# and kept in .cache/corpora/ (Make builds a missing one, then reads it). Help, setup and test need none.
corpus_file = .cache/corpora/$(call slug,$(1)).mk
ifneq ($(filter-out help setup jvm-archive fetch-model test clean,$(or $(MAKECMDGOALS),help)),)
include $(foreach dataset,$(sort $(DATASETS) $(NEGATIVES)),$(call corpus_file,$(dataset)))
endif
define CORPUS_OF
$(call corpus_file,$(1)): | $(SETUP)
	mkdir -p $$(@D) && $(PY) -m pipeline corpus --make $(1) > $$@
endef
$(foreach dataset,$(sort $(DATASETS) $(NEGATIVES)),$(eval $(call CORPUS_OF,$(dataset))))
# Output folder of a dataset's corpus.
corpus_dir = $(call slug,$(corpus.$(1)))
# Your own corpus (`make index CORPUS=path`, no queries needed): a file or folder of JSON lines or TSV,
# gzip'd or not; `encode` and `index` then make its outputs alone. A local corpus's files are inputs Make tracks.
CORPUS ?=
CORPORA = $(sort $(foreach dataset,$(DATASETS),$(corpus.$(dataset))) $(CORPUS))
corpus_input = $(wildcard $(1) $(1)/*)
# A BEIR folder's queries and judgments, which Make tracks too (an ir_datasets id has none here).
queries_input = $(wildcard $(1)/queries.jsonl)
qrels_input = $(wildcard $(1)/qrels/*.tsv)

# $(1) corpus, $(2) its folder, $(3) model, $(4) the model's tag: the documents encoded and indexed once, for
# every dataset over them. A changed local corpus or model makes encode run again: its folder then holds the
# parts of the old ones, which --fresh-if-changed replaces (an interrupted run of the same inputs continues).
define CORPUS_MODEL_RULES
indexes/$(2)/$(4)/encoded/stats.json: $(call model_input,$(3)) $(call corpus_input,$(1)) | $(SETUP)
	$(PY) -m pipeline encode --model $(3) --corpus $(1) --out indexes/$(2)/$(4)/encoded --batch-size $(BATCH_SIZE) --body-precision $(BODY_PRECISION) --fresh-if-changed $(if $(ACCEPT_COLLAPSED),--accept-collapsed)

indexes/$(2)/$(4)/lucene.json: indexes/$(2)/$(4)/encoded/stats.json
	$(PY) -m pipeline index --vectors indexes/$(2)/$(4)/encoded/docs --out indexes/$(2)/$(4)/lucene --threads $(THREADS)
endef

# $(1) corpus, $(2) its folder
define CORPUS_RULES
indexes/$(2)/bm25.json: $(call corpus_input,$(1)) | $(SETUP)
	$(PY) -m pipeline index --corpus $(1) --out indexes/$(2)/bm25 --threads $(THREADS)
endef

# $(1) dataset, $(2) its folder, $(3) its corpus's folder, $(4) model, $(5) the model's tag: its queries encoded
# (in a process of their own: a few seconds, and they follow their own inputs), and its impact run.
define MODEL_RULES
indexes/$(3)/$(5)/queries/$(2).jsonl: $(call model_input,$(4)) $(call queries_input,$(1)) | $(SETUP)
	$(PY) -m pipeline encode --model $(4) --queries $(1)=$$@ --batch-size $(BATCH_SIZE) --body-precision $(BODY_PRECISION) $(if $(ACCEPT_COLLAPSED),--accept-collapsed)

runs/$(2)/$(5).trec: indexes/$(3)/$(5)/lucene.json indexes/$(3)/$(5)/queries/$(2).jsonl
	$(PY) -m pipeline search --index indexes/$(3)/$(5)/lucene --dataset $(1) --queries indexes/$(3)/$(5)/queries/$(2).jsonl --run $$@ --threads $(THREADS)
endef

# $(1) dataset, $(2) its folder, $(3) its corpus's folder
define DATASET_RULES
runs/$(2)/bm25.trec: indexes/$(3)/bm25.json $(call queries_input,$(1))
	$(PY) -m pipeline search --index indexes/$(3)/bm25 --dataset $(1) --run $$@ --threads $(THREADS)

runs/$(2)/$(EVAL_NAME).eval.json: $(foreach model,$(MODEL) $(COMPARE),runs/$(2)/$(call tag,$(model)).trec) runs/$(2)/bm25.trec $(call qrels_input,$(1))
	$(PY) -m pipeline eval --dataset $(1) $(foreach model,$(MODEL) $(COMPARE),--run $(call tag,$(model))=runs/$(2)/$(call tag,$(model)).trec) --run bm25=runs/$(2)/bm25.trec --out $$@
endef
$(foreach corpus,$(sort $(CORPORA) $(corpus.$(NEGATIVES))),$(eval $(call CORPUS_RULES,$(corpus),$(call slug,$(corpus)))))
$(foreach corpus,$(CORPORA),$(foreach model,$(sort $(MODEL) $(COMPARE)),$(eval $(call CORPUS_MODEL_RULES,$(corpus),$(call slug,$(corpus)),$(model),$(call tag,$(model))))))
$(foreach dataset,$(DATASETS),$(eval $(call DATASET_RULES,$(dataset),$(call slug,$(dataset)),$(call corpus_dir,$(dataset)))))
$(foreach dataset,$(DATASETS),$(foreach model,$(sort $(MODEL) $(COMPARE)),$(eval $(call MODEL_RULES,$(dataset),$(call slug,$(dataset)),$(call corpus_dir,$(dataset)),$(model),$(call tag,$(model))))))

each = $(foreach dataset,$(DATASETS),$(subst @,$(call slug,$(dataset)),$(1)))
in_corpora = $(foreach corpus,$(or $(CORPUS),$(CORPORA)),$(subst @,$(call slug,$(corpus)),$(1)))
encode: $(call in_corpora,indexes/@/$(TAG)/encoded/stats.json) $(if $(CORPUS),,$(foreach dataset,$(DATASETS),indexes/$(call corpus_dir,$(dataset))/$(TAG)/queries/$(call slug,$(dataset)).jsonl))
index: $(call in_corpora,indexes/@/$(TAG)/lucene.json indexes/@/bm25.json)
search: $(call each,runs/@/$(TAG).trec runs/@/bm25.trec)
eval: $(call each,runs/@/$(EVAL_NAME).eval.json)

beir-eval: $(call each,runs/@/$(EVAL_NAME).eval.json)
	$(PY) -m pipeline beir-eval $^ --out runs/beir-eval.json --markdown runs/beir-eval.md

# A run that stops on a collapse publishes its last good checkpoint (with collapse.json): Make must
# not delete it, and `make train` fails again while it is there. A killed run leaves checkpoints and
# no model: the same command resumes it (--resume refuses a checkpoint trained with other settings).
.PRECIOUS: $(OUT)/model.safetensors
# Make tracks files, not settings: after changing TRAIN_ARGS or TRAIN_DATA, use another OUT or delete it.
train: $(OUT)/model.safetensors
	@if [ -e $(OUT)/collapse.json ]; then echo "error: $(OUT): its training collapsed (see $(OUT)/collapse.json); delete $(OUT) or use another OUT to train again" >&2; exit 2; fi
# Hard negatives come from a BM25 index, unless TRAIN_DATA is a file of text triples.
$(OUT)/model.safetensors: $(call model_input,$(BASE)) $(if $(wildcard $(TRAIN_DATA)),,indexes/$(call corpus_dir,$(NEGATIVES))/bm25.json) | $(SETUP)
	$(PY) -m pipeline train --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call corpus_dir,$(NEGATIVES))/bm25 --out $(OUT) $(TRAIN_ARGS) $(if $(wildcard $(OUT)/checkpoints/step-*),--resume)

head-stats: $(call model_input,$(MODEL)) | $(SETUP)
	$(PY) -m pipeline head-stats --model $(MODEL) $(if $(RESCALE),--rescale $(RESCALE))

ablation: $(call model_input,$(BASE)) indexes/$(call corpus_dir,$(NEGATIVES))/bm25.json | $(SETUP)
	$(PY) -m pipeline ablation --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call corpus_dir,$(NEGATIVES))/bm25 --dataset $(firstword $(DATASETS)) --out runs/ablation $(ABLATION_ARGS)

# Not file targets: every call trains afresh (about an hour on 2 cores), so each call is asked for.
k-sweep: $(call model_input,$(BASE)) indexes/$(call corpus_dir,$(NEGATIVES))/bm25.json | $(SETUP)
	$(PY) -m pipeline k-sweep --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call corpus_dir,$(NEGATIVES))/bm25 --dataset $(firstword $(DATASETS)) $(K_SWEEP_ARGS)

report: | $(SETUP)
	$(PY) -m pipeline report --runs runs --models models --out runs/report.md

bench: $(call model_input,$(MODEL)) | $(SETUP)
	$(PY) -m pipeline bench --model $(MODEL) --dataset $(firstword $(DATASETS)) --out runs/bench.json --markdown runs/bench.md

# Search and indexing speed against Pyserini's CLI, on the first dataset's corpus encoding replicated 20 times.
BENCH_DATASET = $(firstword $(DATASETS))
search-bench: indexes/$(call corpus_dir,$(BENCH_DATASET))/$(TAG)/encoded/stats.json indexes/$(call corpus_dir,$(BENCH_DATASET))/$(TAG)/queries/$(call slug,$(BENCH_DATASET)).jsonl
	$(PY) -m pipeline search-bench --encoded $(<D) --queries $(word 2,$^) --dataset $(BENCH_DATASET) --threads $(THREADS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf indexes/*/ runs/*/ runs/beir-eval.* .cache
