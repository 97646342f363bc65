"""What each `sml` command does once cli.main has parsed it: call one engine function, print the
result. ``cmd_<name>`` runs the command whose parser set ``run="<name>"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import tomllib
from tqdm import tqdm

from engine import data, profile
from engine.config import (
    Config,
    DemoDataConfig,
    LossConfig,
    ModelConfig,
    ProfileConfig,
    RunConfig,
    TrainConfig,
    load_toml,
)
from engine.data import demo
from engine.errors import UserError
from engine.models.evaluate import evaluate
from engine.models.fit import fit
from engine.models.train import recipe, train
from engine.report import render, table1_markdown
from engine.results.export import export_csv
from engine.runtime.runner import attack_checkpoint
from engine.runtime.sweep import run_sweep, sweep_status
from engine.runtime.sweep.plan import format_plan, plan_sweep
from engine.util import write_text_atomic


def _emit_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=1, default=str)
    if path:
        write_text_atomic(Path(path), text + "\n")


def given(a: argparse.Namespace, cls: type[Config], skip: Sequence[str] = ()) -> dict:
    """The flags of ``cls``'s fields (cli.main._config_flags) that were given on the command line."""
    return {k: getattr(a, k) for k in cls.field_names() if k not in skip and getattr(a, k, None) is not None}


def _data_kw(a: argparse.Namespace) -> dict:
    kw = {"allow_missing": a.allow_missing}
    if a.split_seed is not None:
        kw["seed"] = a.split_seed
    if a.annotations is not None:
        kw["source"] = a.annotations
    if a.difficult is not None:
        kw["difficult"] = a.difficult
    return kw


def _checkpoint_kw(a: argparse.Namespace) -> dict:
    names = None
    if a.label_names:
        try:
            names = [ln.strip() for ln in Path(a.label_names).read_text().splitlines() if ln.strip()]
        except OSError:
            raise UserError(f"{a.label_names}: label names file not found") from None
    # Your own model (--factory, --torchscript, --torchvision, --timm, --asl, --mldecoder, --q2l):
    # engine.models.sources checks the combination.
    own = {k: getattr(a, k) for k in ("factory", "torchscript", "torchvision", "timm", "asl", "mldecoder", "q2l",
                                      "output", "input_size")
           if getattr(a, k) is not None}
    return {"embedding": a.embedding, "label_names": names, "trust_pickle": a.trust_checkpoint,
            "own_model": own or None}


def cmd_data_demo(a: argparse.Namespace) -> None:
    cfg = DemoDataConfig.from_dict(given(a, DemoDataConfig))
    with tqdm(total=cfg.n_train + cfg.n_test, desc="demo data", unit="img", disable=None) as bar:
        out, created = demo.generate(a.out, cfg, progress=bar.update)
    print(f"{'wrote' if created else 'reusing'} demo data set at {out} "
          f"({cfg.n_train} train + {cfg.n_test} test images, {cfg.labels} labels)")


def _train_zoo(a: argparse.Namespace, kind: str) -> dict:
    """`sml train --timm NAME` / `--asl NAME`: the demo recipe's settings, the input size and the loss."""
    toml = load_toml(a.config, tables=("train", "loss")) if a.config else {}
    if any(getattr(a, k) is not None for k in ModelConfig.field_names() if k not in ("family", "input_size")):
        raise UserError(f"--{kind} takes --input-size of the model flags, no other")
    train_cfg = TrainConfig.from_dict({**toml.get("train", {}), **given(a, TrainConfig)}, where="[train]")
    loss_cfg = LossConfig.from_dict({**toml.get("loss", {}), **given(a, LossConfig)}, where="[loss]")
    return fit(kind, getattr(a, kind), train_cfg=train_cfg, loss_cfg=loss_cfg, dataset=a.dataset, root=a.root,
               out=a.out, input_size=a.input_size or data.info(a.dataset).size, resume=a.resume,
               progress=not a.no_progress, device=a.device, **_data_kw(a))


def cmd_train(a: argparse.Namespace) -> None:
    kinds = [k for k in ("model", "timm", "asl") if getattr(a, k)]
    if len(kinds) != 1:
        raise UserError("give one of --model (mlgcn | mlliw), --timm NAME, --asl NAME"
                        + (f", not {' and '.join('--' + k for k in kinds)}" if kinds else ""))
    if kinds[0] != "model":
        _report_training(a, _train_zoo(a, kinds[0]))
        return
    if any(getattr(a, k) is not None for k in LossConfig.field_names()):
        raise UserError("--loss, --gamma-neg, --gamma-pos and --clip are for --timm and --asl models")
    toml = load_toml(a.config, tables=("model", "train")) if a.config else {}
    model_kw = {**toml.get("model", {}), "family": a.model, **given(a, ModelConfig, skip=("family",))}
    if "input_size" not in model_kw:
        model_kw["input_size"] = data.info(a.dataset).size
    model_cfg = ModelConfig.from_dict(model_kw, where="[model]")
    train_kw = {**toml.get("train", {}), **given(a, TrainConfig)}
    name = a.recipe or ("demo" if a.dataset == "demo" else "paper")
    train_cfg = recipe(a.model, name, **train_kw)
    res = train(model_cfg=model_cfg, train_cfg=train_cfg, dataset=a.dataset, root=a.root, out=a.out,
                resume=a.resume, progress=not a.no_progress, device=a.device, **_data_kw(a))
    _report_training(a, res)


def _report_training(a: argparse.Namespace, res: dict) -> None:
    h = res["history"][-1] if res["history"] else {}
    state = f"trained {res['ran']} epoch(s)" if res["ran"] else "up to date"
    print(f"{a.out}: {state}, {res['epochs']} epochs in all, last loss {h.get('loss', float('nan')):.4f}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    rows = [evaluate(c, dataset=a.dataset, root=a.root, split=a.split, **_checkpoint_kw(a), **_data_kw(a))
            for c in a.checkpoint or [None]]
    obj = rows[0] if len(rows) == 1 else rows
    _emit_json(obj, a.out)
    if a.json:
        print(json.dumps(obj, indent=1))
    else:
        print(table1_markdown(rows))


def _parse_params(items: Sequence[str]) -> dict:
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


def cmd_attack(a: argparse.Namespace) -> None:
    params = {}
    if a.config:
        params.update(load_toml(a.config, tables=("attack",)).get("attack", {}))
    params.update(_parse_params(a.param))
    # The run's fields that were given (preset, target, the protocol's knobs); RunSpec checks them all.
    res = attack_checkpoint(a.checkpoint, a.attack, a.out, params=params, **given(a, RunConfig, skip=("attack",)),
                            dataset=a.dataset, root=a.root, split=a.split, device=a.device, model_key=a.model_key,
                            workers=a.workers, progress=not a.no_progress, compile=a.compile,
                            **_checkpoint_kw(a), **_data_kw(a))
    rates = " ".join(f"{v:.3f}" for v in res["success_final"])
    note = ""
    if res["n"] < res["n_requested"]:
        note = f" (only {res['n']} of {res['n_requested']} asked for were predicted right)"
    print(f"{res['group']}: {res['n_eligible']} samples{note}, {res['chunks_run']} chunk(s) run in "
          f"{res['seconds']:.1f} s; success per n (final): {rates}")


def cmd_report(a: argparse.Namespace) -> None:
    paths = render(a.store, a.out, tuple(f.strip() for f in a.format.split(",") if f.strip()),
                   allow_incomplete=a.allow_incomplete, vs=a.vs)
    for path in paths:
        print(path)


def cmd_export(a: argparse.Namespace) -> None:
    print(export_csv(a.store, a.csv))


def cmd_sweep(a: argparse.Namespace) -> None:
    if a.status:
        if a.sweep or a.out:
            raise UserError("--status STORE takes no sweep file and no --out")
        print(json.dumps(sweep_status(a.status), indent=1))
        return
    if a.device_profile and not a.plan:
        raise UserError("--device-profile goes with --plan")
    if a.plan:
        if not a.sweep or a.out:
            raise UserError("usage: sml sweep SWEEP.toml --plan [--device-profile P] (no --out: nothing is written)")
        res = plan_sweep(a.sweep, device_profile=a.device_profile)
        print(json.dumps(res, indent=1) if a.json else format_plan(res))
        return
    if not a.sweep or not a.out:
        raise UserError("usage: sml sweep SWEEP.toml --out STORE.zarr [--address auto|HOST:PORT] [--workers K] "
                        "[--local], or sml sweep --status STORE.zarr")
    if a.local and a.address:
        raise UserError("--local runs without Ray; it cannot be combined with --address")
    res = run_sweep(a.sweep, a.out, address=a.address, workers=a.workers, local=a.local,
                    progress=not a.no_progress, placement_timeout=a.placement_timeout,
                    retry_failed=a.retry_failed, yes=a.yes)
    if a.json:
        print(json.dumps(res, indent=1, default=str))
        return
    actors = ", ".join(f"{k} x{v}" for k, v in res["actors"].items())
    print(f"{res['store']}: sweep {res['sweep']!r}, {res['shards_done']}/{res['shards_total']} shards done "
          f"({res['shards_run']} run now, {res['shards_done_before']} before) on {actors}; {res['samples_run']} "
          f"samples in {res['seconds']:.1f} s ({res['samples_per_s']:.1f}/s). Tables: sml report {res['store']} "
          f"--out reports/")


def _model_opts(a: argparse.Namespace) -> dict:
    """`sml attack`'s model and data flags as engine.profile.harness.load takes them (JSON-able: a
    fresh process per row rebuilds the model from them)."""
    kw = _data_kw(a)
    ck = _checkpoint_kw(a)
    return {"checkpoint": a.checkpoint, "own_model": ck["own_model"], "embedding": a.embedding,
            "label_names": ck["label_names"], "trust_pickle": ck["trust_pickle"], "dataset": a.dataset,
            "root": a.root, "split": a.split, "allow_missing": kw.pop("allow_missing"), "load_kw": kw}


def cmd_profile(a: argparse.Namespace) -> int:
    cfg = ProfileConfig.from_dict(given(a, ProfileConfig))
    if a.compare:
        if a.attack or a.out or a.trace or a.plot:
            raise UserError("--compare OLD.json NEW.json profiles nothing: it takes no --attack, --out, --trace or "
                            "--plot")
        res = profile.compare(profile.read_rows(a.compare[0]), profile.read_rows(a.compare[1]), cfg.tolerance)
        print(profile.format_comparison(res))
        return 1 if res["failed"] else 0
    if a.trace and cfg.compile:
        raise UserError("--trace records the phases of an eager call; a compiled row has none: drop --trace or "
                        "--compile")
    for path in filter(None, (a.out, a.trace, a.plot)):
        if not Path(path).parent.is_dir():
            raise UserError(f"{path}: folder {Path(path).parent} does not exist")
    rows = profile.run(a.attack or [], _model_opts(a), a.batch, cfg, trace=a.trace,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    _emit_json(rows, a.out)
    print(profile.table(rows))
    if a.plot:
        print(profile.plot(rows, a.plot))
    return 0
