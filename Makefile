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
TAG := $(subst /,--,$(patsubst models/%,%,$(patsubst %/,%,$(MODEL))))
# A local model's files are inputs Make tracks; a hub id is not.
MODEL_INPUT := $(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEFAULT_MODEL)/model.safetensors,$(wildcard $(MODEL)/config.json $(MODEL)/*.safetensors))
# Output folder of a dataset: its name with "/" as "-" (scifact, beir-arguana, my-corpus).
slug = $(subst /,-,$(patsubst ./%,%,$(patsubst /%,%,$(patsubst %/,%,$(1)))))

.PHONY: help setup fetch-model encode index search eval beir-eval test clean
help:
	@echo "make setup | beir-eval [MODEL=... DATASETS='scifact nfcorpus ...'] | encode | index | search | eval | test"

setup: $(SETUP) $(DEFAULT_MODEL)/model.safetensors

$(SETUP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[test]"
	touch $@

fetch-model: $(DEFAULT_MODEL)/model.safetensors
$(DEFAULT_MODEL)/model.safetensors: | $(SETUP)
	$(PY) -m pipeline fetch-model --out $(DEFAULT_MODEL)

define DATASET_RULES
indexes/$(2)/$(TAG)/encoded/stats.json: $(MODEL_INPUT) | $(SETUP)
	$(PY) -m pipeline encode --model $(MODEL) --dataset $(1) --out indexes/$(2)/$(TAG)/encoded --batch-size $(BATCH_SIZE)

indexes/$(2)/$(TAG)/lucene.json: indexes/$(2)/$(TAG)/encoded/stats.json
	$(PY) -m pipeline index --vectors indexes/$(2)/$(TAG)/encoded/docs --out indexes/$(2)/$(TAG)/lucene --threads $(THREADS)

indexes/$(2)/bm25.json: | $(SETUP)
	$(PY) -m pipeline index --dataset $(1) --out indexes/$(2)/bm25 --threads $(THREADS)

runs/$(2)/$(TAG).trec: indexes/$(2)/$(TAG)/lucene.json
	$(PY) -m pipeline search --index indexes/$(2)/$(TAG)/lucene --dataset $(1) --queries indexes/$(2)/$(TAG)/encoded/queries.jsonl --run $$@ --threads $(THREADS)

runs/$(2)/bm25.trec: indexes/$(2)/bm25.json
	$(PY) -m pipeline search --index indexes/$(2)/bm25 --dataset $(1) --run $$@ --threads $(THREADS)

runs/$(2)/$(TAG).eval.json: runs/$(2)/$(TAG).trec runs/$(2)/bm25.trec
	$(PY) -m pipeline eval --dataset $(1) --run $(TAG)=runs/$(2)/$(TAG).trec --run bm25=runs/$(2)/bm25.trec --out $$@
endef
$(foreach dataset,$(DATASETS),$(eval $(call DATASET_RULES,$(dataset),$(call slug,$(dataset)))))

each = $(foreach dataset,$(DATASETS),$(subst @,$(call slug,$(dataset)),$(1)))
encode: $(call each,indexes/@/$(TAG)/encoded/stats.json)
index: $(call each,indexes/@/$(TAG)/lucene.json indexes/@/bm25.json)
search: $(call each,runs/@/$(TAG).trec runs/@/bm25.trec)
eval: $(call each,runs/@/$(TAG).eval.json)

beir-eval: $(call each,runs/@/$(TAG).eval.json)
	$(PY) -m pipeline beir-eval $^ --out runs/beir-eval.json --markdown runs/beir-eval.md

test: setup
	$(PY) -m pytest

clean:
	rm -rf indexes/*/ runs/*/ runs/beir-eval.* .cache
