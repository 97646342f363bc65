"""The sweep file: its schema, derived from the config dataclasses, and errors that name the line.

A sweep file (TOML) names the grid -- every [[model]] x every [[attack]] x its presets x its
targets. Each table is checked against the dataclass it becomes (``SweepSettings``,
``ProtocolConfig`` for [protocol], ``RunSpec`` for [[attack]], ``ModelEntry``): the values' rules
live in those classes' field declarations and ``validate``; an error's ``key`` says which key to
blame, and engine.runtime.sweep.locate finds its line (tomllib gives none)::

    [sweep]                  # optional
    name = "paper"           # label shown in the progress bar and the status (default: file stem)
    base = ".."              # folder relative paths are resolved against, itself relative to the
                             # sweep file's folder; default ".." = the folder above the file's, i.e.
                             # the project root for files in sweeps/ (the CWD does not matter)
    device = "auto"          # auto (cuda on GPU actors, else cpu) | cpu | cuda
    cpu_attacks = ["..."]    # attacks whose shards go to CPU-only actors on GPU clusters
                             # (default: the attacks whose spec says cpu_bound)
    cpu_actor_cpus = 4       # CPUs per CPU-only actor there (= its solver worker processes)
    placement_timeout = 60   # seconds an actor (a replacement after a node loss) may wait to be
                             # placed before the sweep goes on without it (--placement-timeout)

    [protocol]               # defaults for every [[attack]] (each may override any of them)
    n = 1000                 # samples per run; omitted: the preset's protocol default (mostly 1000)
    seed = 0
    order = "seeded"         # seeded | first; default: the preset's (released: first, else seeded)
    rounding = "ceil"        # ceil | floor for expLabels; default: the preset's (released: floor)
    chunk_size = 100         # samples per shard (the unit of scheduling and of resume)
    batch_size = 0           # 0: automatic (a function of the attack and image size only)
    early_exit = false
    exit_every = 4
    save_adv = false

    [[model]]                # one per (model, data set)
    checkpoint = "ckpt/mlgcn-voc2007.pt"   # an ML-GCN / ML-LIW checkpoint, or your own model instead:
    # factory = "my_pkg.models:build"      #   build() (build(checkpoint) with a checkpoint) returns
    #                                      #   a module, or (module, label_names)
    # torchscript = "model.pt"             #   a torch.jit.save file
    # torchvision = "resnet18"             #   + checkpoint = its state dict (ImageNet-normalised input)
    # timm = "resnet10t"                   #   + checkpoint = its state dict (timm's mean/std in front)
    # asl = "tresnet_l"                    #   + checkpoint = the ASL authors' file (raw pixels)
    # mldecoder = "tresnet_l"              #   ML-Decoder, + checkpoint = the authors' file as saved
    # q2l = "resnet101"                    #   Query2Label, + checkpoint = the authors' file as saved
    # label_names = "labels.txt"           #   or a list; default: the factory's / the file's
    # output = "logits"                    #   or "probabilities" (converted to logits)
    # input_size = 224                     #   default: the module's input_size, else the data set's
    #                                      #   (the contract: engine.models.sources)
    key = "mlgcn"            # model group in the store (default: checkpoint file stem, factory spec)
    dataset = "voc2007"      # default: the checkpoint's training data set (own models: required;
                             # "csv" = a folder of images + a CSV, engine.data.generic)
    root = "data/VOCdevkit"  # default: the checkpoint's training data root
    split = "test"           # default: the data set's test split (another split is group "dataset@split")
    annotations = "csv"      # VOC csv | txt | xml, COCO instances | mlgcn; default auto (whichever is found)
    options = { difficult = "negative" }   # loader keywords (VOC difficult, NUS-WIDE csv_name, seed ...)

    [[attack]]               # one per attack
    name = "..."             # required: one of engine.attacks.names()
    presets = ["paper"]      # or preset = "paper"; default ["paper"]
    targets = ["show-many"]  # or target = "..."; default ["show-many"]
    target_label = 3         # for reduction / augmentation
    params = { iterations = 50 }           # overrides on top of each preset
    n = 200                  # ... and any [protocol] key
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import attacks
from engine import data as data_mod
from engine.config import ANNOTATIONS, OUTPUTS, TYPE_NAMES, Config, ProtocolConfig, is_a, param, read_toml
from engine.errors import UserError, keyed
from engine.models import sources
from engine.results.format import check_name
from engine.runtime.runspec import RunSpec
from engine.runtime.sweep.locate import Checker

DEVICES = ("auto", "cpu", "cuda")
TABLES = {"sweep": "[sweep]", "protocol": "[protocol]", "model": "[[model]]", "attack": "[[attack]]"}


@dataclass(frozen=True, kw_only=True)
class SweepSettings(Config):
    """The [sweep] table."""

    name: str | None = param(None, doc="label shown in the progress bar and the status (default: the file's stem)")
    base: str = param("..", doc="folder relative paths resolve against, itself relative to the sweep file's folder")
    device: str = param("auto", choices=DEVICES, doc="auto: cuda on GPU actors, else cpu")
    cpu_attacks: tuple[str, ...] | None = param(None, doc="attacks whose shards go to CPU-only actors on GPU "
                                                          "clusters (default: every attack whose spec says cpu_bound)")
    cpu_actor_cpus: int = param(4, ge=1, doc="CPUs per CPU-only actor (= its solver worker processes)")
    placement_timeout: float = param(60.0, gt=0, doc="seconds an actor may wait to be placed before the sweep goes "
                                                     "on without it")
    max_runs: int = param(256, ge=1, doc="more runs than this (grids multiply fast) need --yes")

    def validate(self) -> None:
        names = attacks.registry.cpu_bound() if self.cpu_attacks is None else self.cpu_attacks
        try:
            object.__setattr__(self, "cpu_attacks", tuple(attacks.get(str(a)).name for a in names))
        except UserError as e:
            raise UserError(f"cpu_attacks: {e}", key="cpu_attacks") from None


@dataclass(frozen=True, kw_only=True)
class ModelEntry(Config):
    """One [[model]] table: a checkpoint, or your own model, on a data set (paths resolved against ``base``)."""

    checkpoint: str | None = None  # ours (ML-GCN, ML-LIW); with factory or torchvision: their weights file
    # Your own model instead (engine.models.sources has the contract): one of these.
    factory: str | None = None  # "module:function"
    torchscript: str | None = None  # a torch.jit.save file
    torchvision: str | None = None  # an architecture name, its state dict in checkpoint
    timm: str | None = None  # a timm architecture name, its state dict in checkpoint
    asl: str | None = None  # tresnet_m | tresnet_l | tresnet_xl, the ASL authors' checkpoint in checkpoint
    mldecoder: str | None = None  # ML-Decoder on tresnet_m | tresnet_l | tresnet_xl, the authors' file in checkpoint
    q2l: str | None = None  # Query2Label on resnet101 | tresnet_l, the authors' file in checkpoint
    label_names: str | list[str] | None = None  # a file (one per line) or a list
    output: str = param("logits", choices=OUTPUTS, doc="what your model returns")
    input_size: int | None = param(None, ge=1, doc="input size in px (default: the model's input_size "
                                                   "attribute, else the data set's)")
    key: str | None = None  # None: the checkpoint's (torchscript file's) stem, or the factory spec
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    annotations: str = param("auto", choices=ANNOTATIONS, doc="which annotation files (VOC csv | txt | xml, "
                                                              "COCO instances | mlgcn); auto: whichever is found")
    options: dict[str, Any] = field(default_factory=dict)  # the loader's keywords, e.g. difficult = "negative"

    def validate(self) -> None:
        sources.check(self.checkpoint, self.own_model())
        if self.key is None:
            object.__setattr__(self, "key", sources.default_key(self.checkpoint, self.own_model()))
        with keyed("key"):
            check_name(self.key, "key")
        # Keys with a place of their own in [[model]] (or none): naming them twice would be ambiguous.
        own = {"source": "; use annotations = ...", "root": "; use root = ...", "split": "; use split = ...",
               "allow_missing": "", "size": ""}
        for k in own:
            if k in self.options:
                raise UserError(f"options: {k!r} is not a loader option here{own[k]}", key="options")

    def own_model(self) -> dict[str, Any] | None:
        """Your own model's keys for engine.models.sources; None for a checkpoint of ours (as before)."""
        src = {k: getattr(self, k) for k in sources.KEYS if getattr(self, k) is not None}
        if src.get("output") == "logits":
            del src["output"]
        return src or None

    def load_kw(self) -> dict[str, Any]:
        """Keywords for the data loader (engine.data.load)."""
        return {**self.options, **({"source": self.annotations} if self.annotations != "auto" else {})}


# [protocol]: a ProtocolConfig, so a new protocol field is a sweep-file key at once. [[attack]]: a
# RunSpec whose attack is called name, with lists of presets and targets (the table's own keys).
PROTOCOL_KEYS = tuple(ProtocolConfig.field_names())
ATTACK_OWN = {"name": str, "presets": list, "targets": list}
ATTACK_KEYS = (*ATTACK_OWN, *(k for k in RunSpec.field_names() if k != "attack"))


@dataclass(frozen=True)
class RunEntry:
    model: int  # index into Sweep.models
    spec: RunSpec
    line: int | None = None


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    text: str
    models: list[ModelEntry]
    runs: list[RunEntry]
    settings: SweepSettings = field(default_factory=SweepSettings)

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def cpu_attacks(self) -> tuple[str, ...]:
        return self.settings.cpu_attacks

    @property
    def cpu_actor_cpus(self) -> int:
        return self.settings.cpu_actor_cpus


def load_sweep(path: str | Path, *, datasets: list[str] | None = None, check_files: bool = True,
               yes: bool = False) -> Sweep:
    """Read and strictly validate a sweep file; relative paths resolve against ``[sweep] base``.

    ``datasets`` replaces the registered data set names (tests of files for data sets not installed);
    ``check_files=False`` skips the checks that checkpoints exist; ``yes`` allows more runs than
    ``[sweep] max_runs``.
    """
    data, text = read_toml(path, "sweep file")
    return parse_sweep(data, text, Path(path), datasets=datasets, check_files=check_files, yes=yes)


def parse_sweep(data: dict, text: str, path: Path, *, datasets: list[str] | None = None,
                check_files: bool = True, yes: bool = False) -> Sweep:
    ck = Checker(str(path), text)
    loc = ck.loc
    for k in data:
        if k not in TABLES:
            ck.fail(f"unknown table or key {k!r}; allowed: {', '.join(TABLES.values())}",
                    loc.table_line(k) or loc.key_line(k, None))
    for k in ("sweep", "protocol"):
        if k in data and not isinstance(data[k], dict):
            ck.fail(f"{k} must be a table [{k}]", loc.key_line(k, None))
    for k in ("model", "attack"):
        if k in data and not (isinstance(data[k], list) and all(isinstance(t, dict) for t in data[k])):
            ck.fail(f"{k} must be an array of tables [[{k}]]", loc.key_line(k, None) or loc.table_line(k))

    meta = data.get("sweep", {})
    settings = ck.build(SweepSettings, meta, "[sweep]", [(meta, "sweep", None)], loc.table_line("sweep"))
    base = (path.parent / Path(settings.base).expanduser()).resolve()

    def resolve(value: str) -> str:
        q = Path(value).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    proto = data.get("protocol", {})
    ck.build(ProtocolConfig, proto, "[protocol]", [(proto, "protocol", None)], loc.table_line("protocol"))
    models = _models(ck, data.get("model", []), resolve, datasets, check_files)
    runs = _attacks(ck, data.get("attack", []), proto)
    entries = [RunEntry(model=mi, spec=rs, line=line) for mi in range(len(models)) for rs, line in runs]
    if len(entries) > settings.max_runs and not yes:
        ck.fail(f"the sweep makes {len(entries)} runs ({len(runs)} per model x {len(models)} models), more than "
                f"[sweep] max_runs = {settings.max_runs}: check its grids, then pass --yes (or raise max_runs)",
                loc.key_line("max_runs", "sweep"))
    return Sweep(name=settings.name or path.stem, path=str(path.resolve()), text=text, models=models, runs=entries,
                 settings=settings)


def _models(ck: Checker, tables: list[dict], resolve, datasets: list[str] | None,
            check_files: bool) -> list[ModelEntry]:
    loc = ck.loc
    known_ds = list(datasets) if datasets is not None else data_mod.names()
    models: list[ModelEntry] = []
    seen: dict[tuple, int] = {}
    for i, m in enumerate(tables):
        where = f"[[model]] #{i + 1}"
        line = loc.table_line("model", i)
        paths = {k: resolve(m[k]) for k in ("checkpoint", "torchscript", "root", "label_names")
                 if isinstance(m.get(k), str)}
        entry = ck.build(ModelEntry, {**m, **paths}, where, [(m, "model", i)], line)
        if check_files:
            _model_files(ck, entry, where, i)
        if entry.dataset is not None and entry.dataset not in known_ds:
            ck.fail(f"unknown dataset {entry.dataset!r}; valid: {', '.join(known_ds)}",
                    loc.key_line("dataset", "model", i))
        ident = (entry.key, entry.dataset, entry.split)
        if ident in seen:
            ck.fail(f"{where} repeats [[model]] #{seen[ident] + 1} (same key {entry.key!r}, dataset and split); "
                    f"give one of them another key", line)
        seen[ident] = i
        models.append(entry)
    if not models:
        ck.fail("no [[model]] tables: a sweep needs at least one model", None)
    return models


def _model_files(ck: Checker, entry: ModelEntry, where: str, i: int) -> None:
    """The model's files exist and a factory's module imports here, in the driver (each actor
    imports it again before its first job: engine.runtime.sweep.worker)."""
    for k in ("checkpoint", "torchscript", "label_names"):
        v = getattr(entry, k)
        if isinstance(v, str) and not Path(v).is_file():
            ck.fail(f"{where}: {k} {v} not found", ck.loc.key_line(k, "model", i))
    if entry.factory is not None:
        with ck.reporting(where, [], ck.loc.key_line("factory", "model", i)):
            sources.import_factory(entry.factory)


def _attack_table(ck: Checker, a: dict, where: str, i: int) -> None:
    """The [[attack]] table's keys: each one known, the table's own of the right type, a name."""
    for k, v in a.items():
        if k not in ATTACK_KEYS:
            ck.fail(f"{where}: unknown key {k!r}; valid: {', '.join(ATTACK_KEYS)}", ck.loc.key_line(k, "attack", i))
        if k in ATTACK_OWN and not is_a(v, ATTACK_OWN[k]):
            ck.fail(f"{where}: {k} must be {TYPE_NAMES[ATTACK_OWN[k]]}, got {v!r}", ck.loc.key_line(k, "attack", i))
    if "name" not in a:
        ck.fail(f"{where} needs name = one of: {', '.join(attacks.names())}", ck.loc.table_line("attack", i))
    for one, many in (("preset", "presets"), ("target", "targets")):
        if one in a and many in a:
            ck.fail(f"{where}: give either {one} or {many}, not both", ck.loc.key_line(many, "attack", i))


def _attacks(ck: Checker, tables: list[dict], proto: dict) -> list[tuple[RunSpec, int | None]]:
    out: list[tuple[RunSpec, int | None]] = []
    seen: dict[str, int] = {}
    for i, a in enumerate(tables):
        where = f"[[attack]] #{i + 1}"
        line = ck.loc.table_line("attack", i)
        _attack_table(ck, a, where, i)
        # RunSpec's errors name its fields; these are written under other keys in the table.
        rename = {"attack": "name", "preset": "presets" if "presets" in a else "preset",
                  "target": "targets" if "targets" in a else "target"}
        places = [(a, "attack", i), (proto, "protocol", None)]
        with ck.reporting(where, places, line, rename), keyed("attack"):
            spec = attacks.get(a["name"])
        where = f"{where} ({spec.name})"
        presets = a.get("presets", [a.get("preset", RunSpec.default_of("preset"))])
        targets = a.get("targets", [a.get("target", RunSpec.default_of("target"))])
        common = {**proto, **{k: a[k] for k in PROTOCOL_KEYS if k in a}}
        for pr in presets:
            for tg in targets:
                for params in _grid(ck, spec, a.get("params", {}), where, i):
                    values = {**common, "attack": spec.name, "preset": pr, "target": tg, "params": params,
                              "target_label": a.get("target_label")}
                    rs = ck.build(RunSpec, values, where, places, line, rename)
                    if rs.key in seen:
                        ck.fail(f"{where} repeats run {rs.key!r} of [[attack]] #{seen[rs.key] + 1}; change its "
                                f"preset, target, target_label or params", line)
                    seen[rs.key] = i
                    out.append((rs, line))
    if not out:
        ck.fail(f"no [[attack]] tables: a sweep needs at least one attack (one of: {', '.join(attacks.names())})",
                None)
    return out


def _grid(ck: Checker, spec, params: Any, where: str, index: int) -> list[Any]:
    """The parameter sets of one [[attack]]: a list where the parameter takes one value is an axis,
    and the axes' cartesian product is the runs (first key outermost, as the file lists them).
    Anything but a table is passed on as it is, for RunSpec to refuse."""
    if not isinstance(params, dict):
        return [params]
    schema = spec.config.schema()
    axes: dict[str, list] = {}
    for k, v in params.items():
        if isinstance(v, list) and schema.get(k, object) is not list:
            if not v:
                ck.fail(f"{where}: params {k} is an empty list (a grid axis needs at least one value)",
                        ck.loc.key_line(k, "attack", index))
            axes[k] = v
    if not axes:
        return [dict(params)]
    combos = itertools.product(*axes.values())
    return [{**params, **dict(zip(axes, combo))} for combo in combos]
