"""`sml`: the command line. Parsing only; every command calls one engine function.

Bad input raises engine.errors.UserError, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import UserError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def _emit_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=1, default=str)
    if path:
        from engine.util import write_text_atomic

        write_text_atomic(Path(path), text + "\n")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-missing", action="store_true",
                   help="go on without unusable samples (missing images, bad label lines), reporting them")
    p.add_argument("--split-seed", type=int, help="seed of the study's 80/20 split (VOC2012, NUS-WIDE; default 0)")


def _data_kw(a: argparse.Namespace) -> dict:
    kw = {"allow_missing": a.allow_missing}
    if a.split_seed is not None:
        kw["seed"] = a.split_seed
    return kw


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", help="ML-GCN release checkpoints: the GloVe pickle (default: found next to it)")
    p.add_argument("--label-names", help="file with the checkpoint's label names, one per line")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="fully unpickle a checkpoint the safe loader refuses (only for files you trust)")


def _checkpoint_kw(a: argparse.Namespace) -> dict:
    names = None
    if a.label_names:
        try:
            names = [ln.strip() for ln in Path(a.label_names).read_text().splitlines() if ln.strip()]
        except OSError:
            raise UserError(f"{a.label_names}: label names file not found") from None
    return {"embedding": a.embedding, "label_names": names, "trust_pickle": a.trust_checkpoint}


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
    d.set_defaults(run=_run_data_demo)


def _run_data_demo(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from engine.config import DemoDataConfig
    from engine.data import demo

    cfg = DemoDataConfig(n_train=a.n_train, n_test=a.n_test, size=a.size, labels=a.labels, seed=a.seed)
    with tqdm(total=cfg.n_train + cfg.n_test, desc="demo data", unit="img", disable=None) as bar:
        out, created = demo.generate(a.out, cfg, progress=bar.update)
    print(f"{'wrote' if created else 'reusing'} demo data set at {out} "
          f"({cfg.n_train} train + {cfg.n_test} test images, {cfg.labels} labels)")


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
    p.set_defaults(run=_run_train)


def _run_train(a: argparse.Namespace) -> None:
    from engine.config import ModelConfig, load_toml
    from engine.models.train import recipe, train

    toml = load_toml(a.config) if a.config else {}
    unknown = sorted(set(toml) - {"model", "train"})
    if unknown:
        raise UserError(f"{a.config}: unknown table(s) {unknown}; valid: [model], [train]")
    model_kw = {**toml.get("model", {}), "family": a.model}
    for k in ("backbone", "input_size", "backbone_weights", "embedding", "normalization"):
        if getattr(a, k) is not None:
            model_kw[k] = getattr(a, k)
    if "input_size" not in model_kw:
        from engine import data

        model_kw["input_size"] = data.info(a.dataset).size
    model_cfg = ModelConfig.from_dict(model_kw, where="[model]")
    train_kw = dict(toml.get("train", {}))
    for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "backbone_lr_mult", "grad_clip",
              "lr_schedule", "seed", "freeze_backbone", "augment"):
        if getattr(a, k) is not None:
            train_kw[k] = getattr(a, k)
    name = a.recipe or ("demo" if a.dataset == "demo" else "paper")
    train_cfg = recipe(a.model, name, **train_kw)
    res = train(model_cfg=model_cfg, train_cfg=train_cfg, dataset=a.dataset, root=a.root, out=a.out,
                resume=a.resume, progress=not a.no_progress, device=a.device, **_data_kw(a))
    h = res["history"][-1] if res["history"] else {}
    state = f"trained {res['ran']} epoch(s)" if res["ran"] else "up to date"
    print(f"{a.out}: {state}, {res['epochs']} epochs in all, last loss {h.get('loss', float('nan')):.4f}")


# ---------------------------------------------------------------- evaluate
@command("evaluate", "Table 1 metrics of one or more checkpoints")
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+")
    p.add_argument("--dataset", help="default: the checkpoint's training data set")
    p.add_argument("--root", help="default: the checkpoint's training data root")
    p.add_argument("--split", help="default: the data set's test split")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", help="also write the JSON to this file")
    _add_checkpoint_flags(p)
    _add_data_flags(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> None:
    from engine.models.evaluate import evaluate
    from engine.report import table1_markdown

    rows = [evaluate(c, dataset=a.dataset, root=a.root, split=a.split, **_checkpoint_kw(a), **_data_kw(a))
            for c in a.checkpoint]
    obj = rows[0] if len(rows) == 1 else rows
    _emit_json(obj, a.out)
    if a.json:
        print(json.dumps(obj, indent=1))
    else:
        print(table1_markdown(rows))


# ---------------------------------------------------------------- attack
def _parse_params(items: Sequence[str]) -> dict:
    import tomllib

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--param {item!r}: expected NAME=VALUE, e.g. --param eps=0.01")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v  # a bare word: a string
    return out


@command("attack", "run one attack of the study's protocol on a checkpoint into a Zarr store")
def _attack(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", required=True, help="fgsm fgm bim pgd slide mifgsm mldp mlcw mlalp")
    p.add_argument("--preset", default="paper", help="paper | released (| demo, full where defined)")
    p.add_argument("--target", default="show-many",
                   help="show-many | hiding-single | random | extreme | reduction | augmentation | hiding-all")
    p.add_argument("--target-label", help="label (index or name) for reduction / augmentation")
    p.add_argument("--out", required=True, help="Zarr store (created or resumed)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a preset value (repeatable)")
    p.add_argument("--config", help="TOML file with an [attack] table of parameter values")
    p.add_argument("--n", type=int, help="samples (default: the preset's; 1000, or 200 for MLA-LP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--order", default="seeded", help="seeded | first (the released code's first N)")
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--batch-size", type=int, default=0, help="0: automatic")
    p.add_argument("--chunk-size", type=int, default=100, help="samples per stored chunk (resume unit)")
    p.add_argument("--early-exit", action="store_true", help="retire samples that reach y* (own semantics)")
    p.add_argument("--save-adv", action="store_true", help="also store x_adv - x (float16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="MLA-LP: CPU worker processes for the LPs")
    p.add_argument("--model-key", help="group name for the model in the store (default: checkpoint stem)")
    p.add_argument("--compile", default="auto",
                   help="on | off | auto: each iteration as one torch.compile graph (auto: on CUDA only)")
    p.add_argument("--no-progress", action="store_true")
    _add_checkpoint_flags(p)
    _add_data_flags(p)
    p.set_defaults(run=_run_attack)


def _run_attack(a: argparse.Namespace) -> None:
    from engine.config import load_toml
    from engine.runtime.runner import attack_checkpoint

    params = {}
    if a.config:
        toml = load_toml(a.config)
        unknown = sorted(set(toml) - {"attack"})
        if unknown:
            raise UserError(f"{a.config}: unknown table(s) {unknown}; valid: [attack]")
        params.update(toml.get("attack", {}))
    params.update(_parse_params(a.param))
    res = attack_checkpoint(a.checkpoint, a.attack, a.out, preset=a.preset, target=a.target,
                            target_label=a.target_label, params=params, n=a.n, seed=a.seed, order=a.order,
                            dataset=a.dataset, root=a.root, split=a.split, chunk_size=a.chunk_size,
                            batch_size=a.batch_size, early_exit=a.early_exit, save_adv=a.save_adv, device=a.device,
                            model_key=a.model_key, workers=a.workers, progress=not a.no_progress, compile=a.compile,
                            **_checkpoint_kw(a), **_data_kw(a))
    rates = " ".join(f"{v:.3f}" for v in res["success_final"])
    note = ""
    if res["n"] < res["n_requested"]:
        note = f" (only {res['n']} of {res['n_requested']} asked for were predicted right)"
    print(f"{res['group']}: {res['n_eligible']} samples{note}, {res['chunks_run']} chunk(s) run in "
          f"{res['seconds']:.1f} s; success per n (final): {rates}")


# ---------------------------------------------------------------- report
@command("report", "Tables 1-3 (md, csv, json) and plots from a result store")
def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for the tables and plots")
    p.add_argument("--format", default="md,csv,json", help="comma-separated: md, csv, json")
    p.set_defaults(run=_run_report)


def _run_report(a: argparse.Namespace) -> None:
    from engine.report import render

    paths = render(a.store, a.out, tuple(f.strip() for f in a.format.split(",") if f.strip()))
    for path in paths:
        print(path)


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from cli import sweep_cmd  # noqa: F401 - registers `sml sweep`

    parser = argparse.ArgumentParser(prog="sml", description="Showing-many-labels adversarial attack engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_) in COMMANDS.items():
        fn(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except UserError as e:
        print(f"sml: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sml: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
