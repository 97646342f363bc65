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
from dataclasses import MISSING

from engine import config
from engine.errors import UserError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}  # name -> (add flags, help)


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def _one_of(values: Sequence) -> str:
    return " | ".join(map(str, values))


def _config_flags(p, cls: type[config.Config], names: Sequence[str] | None = None, *,
                  show_defaults: bool = True) -> None:
    """A flag per field of ``cls`` (or of ``names``): ``--field-name`` with the type, and a help made of
    the doc, choices, range and default the field declares (engine.config.param). The config checks
    the value (one line, exit 2, as for every other input). Each flag's default is None, so that
    only what was given goes on (cli.commands.given) and the config's own default applies otherwise."""
    rules, schema = cls.field_rules(), cls.schema()
    for name in names or cls.field_names():
        rule, t, default = rules[name], schema[name], cls.default_of(name)
        notes = [rule.expected(t is int)] if rule.bounded else []
        if show_defaults and default not in (None, MISSING) and t is not bool:
            notes.append(f"default {default}")
        text = rule.doc + (f" ({'; '.join(notes)})" if notes else "")
        if rule.choices is not None:
            text = f"{_one_of(rule.allowed())}: {text}"
        text = text.replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if t is bool and default is True:
            p.add_argument(f"--no-{flag[2:]}", dest=name, action="store_false", default=None, help=f"turn off: {text}")
        elif t is bool:
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, type=t if t in (int, float) else str, default=None, required=default is MISSING,
                           help=text)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-missing", action="store_true",
                   help="go on without unusable samples (missing images, bad label lines), reporting them")
    p.add_argument("--split-seed", type=int, help="seed of the study's 80/20 split (VOC2012, NUS-WIDE; default 0)")
    # Choices of the loaders, refused here before anything loads (the loader checks them per data set).
    p.add_argument("--annotations", choices=config.ANNOTATIONS,
                   help=f"annotation files to read: VOC {_one_of(config.VOC_SOURCES[1:])}, COCO "
                        f"{_one_of(config.COCO_SOURCES[1:])} (default: auto, whichever is found)")
    p.add_argument("--difficult", choices=config.VOC_DIFFICULT,
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
    p.add_argument("--timm", metavar="NAME",
                   help="a timm architecture (e.g. resnet10t) whose state dict is --checkpoint; its label count "
                        "from the checkpoint's head, timm's mean/std for it put in front")
    p.add_argument("--asl", metavar="NAME", help="tresnet_m | tresnet_l | tresnet_xl: an ASL (Alibaba-MIIL/ASL) "
                                                 "checkpoint as its authors saved it, or in timm's layout; raw pixels")
    p.add_argument("--mldecoder", metavar="ARCH", help="ML-Decoder on a TResNet (tresnet_m, tresnet_l, tresnet_xl), "
                                                       "--checkpoint as its authors saved it")
    p.add_argument("--q2l", metavar="ARCH", help="Query2Label on resnet101 or tresnet_l, --checkpoint as its "
                                                 "authors saved it (ImageNet normalisation is put in front)")
    p.add_argument("--output", choices=config.OUTPUTS,
                   help=f"what your model outputs (default {config.OUTPUTS[0]}; probabilities are converted to logits)")
    p.add_argument("--input-size", type=int, help="your model's input size in px (default: the model's "
                                                  "input_size attribute, else the data set's)")


# ---------------------------------------------------------------- data
@command("data", "build a data set (the embedded demo)")
def _data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    d = sub.add_parser("demo", help="generate the embedded demo data set (no download)")
    d.add_argument("--out", required=True, help="folder to create (reused if it holds the same data set)")
    _config_flags(d, config.DemoDataConfig)
    d.set_defaults(run="data_demo")


# ---------------------------------------------------------------- train
@command("train", "train ML-GCN, ML-LIW, a timm or an ASL model and checkpoint every epoch")
def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=_one_of(config.ModelConfig.field_rules()["family"].allowed()))
    p.add_argument("--timm", metavar="NAME", help="instead of --model: a timm architecture (e.g. resnet10t), from "
                                                  "random weights; the checkpoint is what --timm NAME reads")
    p.add_argument("--asl", metavar="NAME", help="instead of --model: an ASL TResNet (tresnet_m | tresnet_l | "
                                                 "tresnet_xl), from random weights")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--root", required=True, help="data set folder")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--recipe", default=None, help="demo | paper (default: demo on the demo data set, else paper)")
    p.add_argument("--config", help="TOML file with [model] and [train] tables")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint at --out (no-op if complete)")
    # Not given: --config's value, else the recipe's (training) or the config's (model; input size:
    # the data set's).
    _config_flags(p.add_argument_group("model (the [model] table of --config)"), config.ModelConfig,
                  [k for k in config.ModelConfig.field_names() if k != "family"], show_defaults=False)
    _config_flags(p.add_argument_group("training (the [train] table of --config; default: the recipe's)"),
                  config.TrainConfig, show_defaults=False)
    _config_flags(p.add_argument_group("loss (--timm, --asl)"), config.LossConfig)
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
    p.add_argument("--checkpoint", help="ML-GCN / ML-LIW checkpoint; or the weights of your own model "
                                        "(--factory, --torchvision, --timm, --asl, --mldecoder, --q2l)")
    _config_flags(p, config.RunConfig, ("attack", "preset", "target", "target_label"))
    p.add_argument("--out", required=True, help="Zarr store (created or resumed)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a preset value (repeatable)")
    p.add_argument("--config", help="TOML file with an [attack] table of parameter values")
    _config_flags(p.add_argument_group("protocol (a sweep file's [protocol] keys)"), config.ProtocolConfig)
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0,
                   help="CPU worker processes for attacks with solver work (e.g. an LP per sample); 0: inline")
    p.add_argument("--model-key", help="group name for the model in the store (default: checkpoint stem)")
    p.add_argument("--compile", default=config.COMPILE_MODES[0],
                   help=f"{_one_of(config.COMPILE_MODES)}: each iteration as one torch.compile graph (default "
                        f"{config.COMPILE_MODES[0]}: on CUDA only)")
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
                   help="seconds an actor may wait to be placed before the sweep goes on without it (default: the "
                        "sweep file's [sweep] placement_timeout)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--plan", action="store_true",
                   help="attack nothing: print the samples, passes and device time per run and the total on "
                        "1, 4, 8, 32 devices (timed here on each model, or from --device-profile)")
    p.add_argument("--device-profile", metavar="P",
                   help="with --plan: the rows of `sml profile --out`, or a record `make bench` wrote")


# ---------------------------------------------------------------- profile
@command("profile", "throughput of attack implementations on one model, side by side (or --compare two profiles)")
def _profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attack", action="append", metavar="SPEC",
                   help="repeatable: a registered attack as a run key (NAME[.PRESET][@k=v,...]); your callable "
                        "MODULE:FUNCTION[@k=v,...], fn(model, x, y_star, **params) -> x_adv; or advertorch:NAME, "
                        "torchattacks:NAME (a peer library's version of our attack NAME)")
    p.add_argument("--checkpoint", help="ML-GCN / ML-LIW checkpoint; or the weights of --factory / --torchvision")
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--batch", default="16", metavar="B[,B...]|auto",
                   help="batch sizes, one row each (default 16); auto: the largest that fits the device")
    _config_flags(p, config.ProfileConfig)
    p.add_argument("--out", metavar="FILE.json", help="write the rows (a JSON list)")
    p.add_argument("--trace", metavar="FILE", help="Chrome trace of the profiled call (several rows: FILE.<i>-b<B>)")
    p.add_argument("--plot", metavar="FILE", help="images/s and peak memory against the batch size (png, svg, pdf)")
    p.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"),
                   help="profile nothing: match the rows of two profiles and exit 1 if one got slower than "
                        "--tolerance allows")
    _add_checkpoint_flags(p)
    _add_data_flags(p)


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
        # A command returns None (success) or its exit code (e.g. a comparison that failed its gate).
        code = getattr(commands, f"cmd_{args.run}")(args)
    except UserError as e:
        print(f"sml: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sml: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
