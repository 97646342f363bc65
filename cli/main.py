"""`sml`: the command line. This module only parses; cli.commands runs each command by calling
one engine function.

Bad input raises engine.errors.UserError, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from engine.errors import UserError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}  # name -> (add flags, help)


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-missing", action="store_true",
                   help="go on without unusable samples (missing images, bad label lines), reporting them")
    p.add_argument("--split-seed", type=int, help="seed of the study's 80/20 split (VOC2012, NUS-WIDE; default 0)")
    p.add_argument("--annotations", default="auto", choices=("auto", "txt", "xml", "csv", "instances", "mlgcn"),
                   help="annotation files to read: VOC csv | txt | xml, COCO instances | mlgcn (default: auto, "
                        "whichever is found)")
    p.add_argument("--difficult", choices=("positive", "negative"),
                   help="VOC: a class shown only by difficult objects counts as present (default, ML-GCN's "
                        "training) or absent (the study's attack scripts)")


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", help="ML-GCN release checkpoints: the GloVe pickle (default: found next to it)")
    p.add_argument("--label-names", help="file with the model's label names, one per line")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a checkpoint the safe loader refuses (only for files you trust)")
    # Your own model instead of an ML-GCN / ML-LIW checkpoint (the contract: engine.models.sources).
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="your model from a Python function: returns an nn.Module mapping images in [0, 1] to "
                        "scores per label, or (module, label_names); called with --checkpoint if given")
    p.add_argument("--torchscript", metavar="FILE", help="your model as a TorchScript file (torch.jit.save)")
    p.add_argument("--torchvision", metavar="ARCH",
                   help="a torchvision classifier (e.g. resnet18) whose multi-label head's state dict is "
                        "--checkpoint (ImageNet normalisation is put in front)")
    p.add_argument("--output", choices=("logits", "probabilities"),
                   help="what your model outputs (default logits; probabilities are converted to logits)")
    p.add_argument("--input-size", type=int, help="your model's input size in px (default: the model's "
                                                  "input_size attribute, else the data set's)")


# ---------------------------------------------------------------- data
@command("data", "build a data set (the embedded demo)")
def _data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    d = sub.add_parser("demo", help="generate the embedded demo data set (no download)")
    d.add_argument("--out", required=True, help="folder to create (reused if it holds the same data set)")
    d.add_argument("--n-train", type=int, default=4000)
    d.add_argument("--n-test", type=int, default=1000)
    d.add_argument("--size", type=int, default=32, help="images are SIZE..2*SIZE px per side (>= 16)")
    d.add_argument("--labels", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run="data_demo")


# ---------------------------------------------------------------- train
@command("train", "train ML-GCN or ML-LIW and checkpoint every epoch")
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="mlgcn | mlliw")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--root", required=True, help="data set folder")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--recipe", default=None, help="demo | paper (default: demo on the demo data set, else paper)")
    p.add_argument("--config", help="TOML file with [model] and [train] tables")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint at --out (no-op if complete)")
    p.add_argument("--backbone", help="tiny | resnet18 | resnet50 | resnet101 | inception_v3")
    p.add_argument("--input-size", type=int)
    p.add_argument("--backbone-weights", help="local ImageNet state dict, or a checkpoint to take features.* from")
    p.add_argument("--embedding", help="ML-GCN label embeddings (.npy or a GloVe pickle, C x E)")
    p.add_argument("--normalization", help="family | imagenet | half")
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--optimizer", str),
                      ("--weight-decay", float), ("--backbone-lr-mult", float), ("--grad-clip", float),
                      ("--lr-schedule", str), ("--seed", int)):
        p.add_argument(flag, type=typ)
    p.add_argument("--freeze-backbone", action="store_true", default=None)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true")
    _add_data_flags(p)


# ---------------------------------------------------------------- evaluate
@command("evaluate", "Table 1 metrics of one or more checkpoints")
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", nargs="+", help="one or more checkpoints (or your own model's weights file)")
    p.add_argument("--dataset", help="default: the checkpoint's training data set")
    p.add_argument("--root", help="default: the checkpoint's training data root")
    p.add_argument("--split", help="default: the data set's test split")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="also write the JSON to this file")
    _add_checkpoint_flags(p)
    _add_data_flags(p)


# ---------------------------------------------------------------- attack
@command("attack", "run one attack of the study's protocol on a checkpoint into a Zarr store")
def _attack(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="ML-GCN / ML-LIW checkpoint; or the weights of --factory / --torchvision")
    p.add_argument("--attack", required=True, help="a registered attack (an unknown name lists them)")
    p.add_argument("--preset", default="paper", help="paper | released (| demo, full where defined)")
    p.add_argument("--target", default="show-many",
                   help="show-many | hiding-single | random | extreme | reduction | augmentation | hiding-all")
    p.add_argument("--target-label", help="label (index or name) for reduction / augmentation")
    p.add_argument("--out", required=True, help="Zarr store (created or resumed)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a preset value (repeatable)")
    p.add_argument("--config", help="TOML file with an [attack] table of parameter values")
    p.add_argument("--n", type=int, help="samples (default: the preset's protocol default, mostly 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", help="seeded | first (default: the preset's; released: first, as the code)")
    p.add_argument("--rounding", help="ceil | floor for expLabels (default: the preset's; released: floor)")
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--batch-size", type=int, default=0, help="0: automatic")
    p.add_argument("--chunk-size", type=int, default=100, help="samples per stored chunk (resume unit)")
    p.add_argument("--early-exit", action="store_true", help="retire samples that reach y* (own semantics)")
    p.add_argument("--save-adv", action="store_true", help="also store x_adv - x (float16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0,
                   help="CPU worker processes for attacks with solver work (e.g. an LP per sample); 0: inline")
    p.add_argument("--model-key", help="group name for the model in the store (default: checkpoint stem)")
    p.add_argument("--compile", default="auto",
                   help="on | off | auto: each iteration as one torch.compile graph (auto: on CUDA only)")
    p.add_argument("--no-progress", action="store_true")
    _add_checkpoint_flags(p)
    _add_data_flags(p)


# ---------------------------------------------------------------- report
@command("report", "Tables 1-3 (md, csv, json) and plots from a result store")
def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for the tables and plots")
    p.add_argument("--format", default="md,csv,json", help="comma-separated: md, csv, json")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="report the runs that are intact and list the damaged ones instead of stopping")
    p.add_argument("--vs", metavar="PARAM", help="plot success against this swept parameter only (default: "
                                                 "a plot per parameter a grid varies)")


# ---------------------------------------------------------------- sweep
@command("export", "one CSV row per (run, attacked sample) from a result store")
def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--csv", required=True, metavar="DIR", help="folder to write samples.csv into")


@command("sweep", "run a sweep file (models x attacks x presets x targets) over Ray actors into one store")
def _sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", nargs="?", metavar="SWEEP.toml", help="sweep file (see sweeps/paper.toml)")
    p.add_argument("--out", help="Zarr store (created, or resumed if it holds the same sweep)")
    p.add_argument("--status", metavar="STORE", help="print the progress of the sweep in STORE as JSON and exit")
    p.add_argument("--address", help="join a running Ray cluster: auto | HOST:PORT (default: start Ray here)")
    p.add_argument("--workers", type=int, help="actors (default: one per GPU, or one per CPU without GPUs)")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    p.add_argument("--yes", action="store_true", help="run a sweep of more runs than its [sweep] max_runs")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the shards whose samples were recorded as failed after repeated errors")
    p.add_argument("--placement-timeout", type=float, metavar="S",
                   help="seconds an actor may wait to be placed before the sweep goes on without it (default 60)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--plan", action="store_true",
                   help="attack nothing: print the samples, passes and device time per run and the total on "
                        "1, 4, 8, 32 devices (timed here on each model, or from --device-profile)")
    p.add_argument("--device-profile", metavar="P", help="with --plan: a device profile written by `make bench`")


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sml", description="Showing-many-labels adversarial attack engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=name)  # cli.commands.cmd_<run> runs it (a sub-command may name another)
        fn(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # The one deferred load of our code: cli.commands brings in the engine (torch, zarr: seconds),
        # which `--help` and usage errors never need. It never imports this module back.
        commands = importlib.import_module("cli.commands")
        getattr(commands, f"cmd_{args.run}")(args)
    except UserError as e:
        print(f"sml: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sml: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
