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
# Outputs are named after the model: models/NAME -> NAME, ORG/NAME (a hub id) -> ORG--NAME.
tag = $(subst /,--,$(patsubst models/%,%,$(patsubst %/,%,$(1))))
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

.PHONY: help setup fetch-model encode index search eval beir-eval head-stats train ablation k-sweep report bench search-bench test clean
help:
	@echo "make setup | beir-eval [MODEL=... DATASETS='scifact nfcorpus ...' COMPARE=...] | encode | index | search | eval"
	@echo "make train [MODEL=... OUT=models/trained TRAIN_ARGS='--steps 200'] | head-stats [RESCALE=16|auto] | ablation | test"
	@echo "make k-sweep [K_SWEEP_ARGS='--surrogate dense' | '--steps 100 --seeds 5'] | report (runs/report.md from what runs/ holds)"

setup: $(SETUP) $(DEFAULT_MODEL)/model.safetensors

$(SETUP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[test]"
	touch $@

fetch-model: $(DEFAULT_MODEL)/model.safetensors
$(DEFAULT_MODEL)/model.safetensors: | $(SETUP)
	$(PY) -m pipeline fetch-model --out $(DEFAULT_MODEL)

# $(1) dataset, $(2) its folder, $(3) model, $(4) the model's tag
define MODEL_RULES
indexes/$(2)/$(4)/encoded/stats.json: $(call model_input,$(3)) | $(SETUP)
	$(PY) -m pipeline encode --model $(3) --dataset $(1) --out indexes/$(2)/$(4)/encoded --batch-size $(BATCH_SIZE) $(if $(ACCEPT_COLLAPSED),--accept-collapsed)

indexes/$(2)/$(4)/lucene.json: indexes/$(2)/$(4)/encoded/stats.json
	$(PY) -m pipeline index --vectors indexes/$(2)/$(4)/encoded/docs --out indexes/$(2)/$(4)/lucene --threads $(THREADS)

runs/$(2)/$(4).trec: indexes/$(2)/$(4)/lucene.json
	$(PY) -m pipeline search --index indexes/$(2)/$(4)/lucene --dataset $(1) --queries indexes/$(2)/$(4)/encoded/queries.jsonl --run $$@ --threads $(THREADS)
endef

# $(1) dataset, $(2) its folder
define DATASET_RULES
indexes/$(2)/bm25.json: | $(SETUP)
	$(PY) -m pipeline index --dataset $(1) --out indexes/$(2)/bm25 --threads $(THREADS)

runs/$(2)/bm25.trec: indexes/$(2)/bm25.json
	$(PY) -m pipeline search --index indexes/$(2)/bm25 --dataset $(1) --run $$@ --threads $(THREADS)

runs/$(2)/$(EVAL_NAME).eval.json: $(foreach model,$(MODEL) $(COMPARE),runs/$(2)/$(call tag,$(model)).trec) runs/$(2)/bm25.trec
	$(PY) -m pipeline eval --dataset $(1) $(foreach model,$(MODEL) $(COMPARE),--run $(call tag,$(model))=runs/$(2)/$(call tag,$(model)).trec) --run bm25=runs/$(2)/bm25.trec --out $$@
endef
$(foreach dataset,$(sort $(DATASETS) $(NEGATIVES)),$(eval $(call DATASET_RULES,$(dataset),$(call slug,$(dataset)))))
$(foreach dataset,$(DATASETS),$(foreach model,$(sort $(MODEL) $(COMPARE)),$(eval $(call MODEL_RULES,$(dataset),$(call slug,$(dataset)),$(model),$(call tag,$(model))))))

each = $(foreach dataset,$(DATASETS),$(subst @,$(call slug,$(dataset)),$(1)))
encode: $(call each,indexes/@/$(TAG)/encoded/stats.json)
index: $(call each,indexes/@/$(TAG)/lucene.json indexes/@/bm25.json)
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
$(OUT)/model.safetensors: $(call model_input,$(BASE)) $(if $(wildcard $(TRAIN_DATA)),,indexes/$(call slug,$(NEGATIVES))/bm25.json) | $(SETUP)
	$(PY) -m pipeline train --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call slug,$(NEGATIVES))/bm25 --out $(OUT) $(TRAIN_ARGS) $(if $(wildcard $(OUT)/checkpoints/step-*),--resume)

head-stats: $(call model_input,$(MODEL)) | $(SETUP)
	$(PY) -m pipeline head-stats --model $(MODEL) $(if $(RESCALE),--rescale $(RESCALE))

ablation: $(call model_input,$(BASE)) indexes/$(call slug,$(NEGATIVES))/bm25.json | $(SETUP)
	$(PY) -m pipeline ablation --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call slug,$(NEGATIVES))/bm25 --dataset $(firstword $(DATASETS)) --out runs/ablation $(ABLATION_ARGS)

# Not file targets: every call trains afresh (about an hour on 2 cores), so each call is asked for.
k-sweep: $(call model_input,$(BASE)) indexes/$(call slug,$(NEGATIVES))/bm25.json | $(SETUP)
	$(PY) -m pipeline k-sweep --model $(BASE) --data $(TRAIN_DATA) --negatives-index indexes/$(call slug,$(NEGATIVES))/bm25 --dataset $(firstword $(DATASETS)) $(K_SWEEP_ARGS)

report: | $(SETUP)
	$(PY) -m pipeline report --runs runs --models models --out runs/report.md

bench: $(call model_input,$(MODEL)) | $(SETUP)
	$(PY) -m pipeline bench --model $(MODEL) --dataset $(firstword $(DATASETS)) --out runs/bench.json --markdown runs/bench.md

# Search and indexing speed against Pyserini's CLI, on the first dataset's encoding replicated 20 times.
search-bench: indexes/$(call slug,$(firstword $(DATASETS)))/$(TAG)/encoded/stats.json
	$(PY) -m pipeline search-bench --encoded $(<D) --dataset $(firstword $(DATASETS)) --threads $(THREADS)

test: setup
	$(PY) -m pytest

clean:
	rm -rf indexes/*/ runs/*/ runs/beir-eval.* .cache
