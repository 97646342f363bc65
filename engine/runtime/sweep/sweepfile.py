"""The sweep file: its schema, derived from the config dataclasses, and errors that name the line.

A sweep file (TOML) names the grid -- every [[model]] x every [[attack]] x its presets x its
targets. Each table is checked against the dataclass it becomes (``SweepSettings``, ``RunSpec``
for [protocol] and [[attack]], ``ModelEntry``): the values' rules live in those classes'
``validate``; this module only finds the line of the key an error names (tomllib gives none)::

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import attacks
from engine import data as data_mod
from engine.config import TYPE_NAMES, Config, is_a, read_toml
from engine.errors import UserError
from engine.models import sources
from engine.results.format import check_name
from engine.runtime.runspec import RunSpec

DEVICES = ("auto", "cpu", "cuda")
TABLES = {"sweep": "[sweep]", "protocol": "[protocol]", "model": "[[model]]", "attack": "[[attack]]"}


@dataclass(frozen=True, kw_only=True)
class SweepSettings(Config):
    """The [sweep] table."""

    name: str | None = None
    base: str = ".."
    device: str = "auto"
    cpu_attacks: tuple[str, ...] | None = None  # None: every attack whose spec says cpu_bound
    cpu_actor_cpus: int = 4
    placement_timeout: float = 60.0
    max_runs: int = 256  # more runs than this (grids multiply fast) need --yes

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}")
        names = attacks.registry.cpu_bound() if self.cpu_attacks is None else self.cpu_attacks
        try:
            object.__setattr__(self, "cpu_attacks", tuple(attacks.get(str(a)).name for a in names))
        except UserError as e:
            raise UserError(f"cpu_attacks: {e}") from None
        if self.cpu_actor_cpus < 1:
            raise UserError(f"cpu_actor_cpus must be >= 1, got {self.cpu_actor_cpus}")
        if self.max_runs < 1:
            raise UserError(f"max_runs must be >= 1, got {self.max_runs}")
        if not 0 < self.placement_timeout < float("inf"):
            raise UserError(f"placement_timeout must be a positive number of seconds, got {self.placement_timeout}")


@dataclass(frozen=True, kw_only=True)
class ModelEntry(Config):
    """One [[model]] table: a checkpoint, or your own model, on a data set (paths resolved against ``base``)."""

    checkpoint: str | None = None  # ours (ML-GCN, ML-LIW); with factory or torchvision: their weights file
    # Your own model instead (engine.models.sources has the contract): one of these three.
    factory: str | None = None  # "module:function"
    torchscript: str | None = None  # a torch.jit.save file
    torchvision: str | None = None  # an architecture name, its state dict in checkpoint
    label_names: str | list[str] | None = None  # a file (one per line) or a list
    output: str = "logits"  # logits | probabilities
    input_size: int | None = None  # None: the model's input_size attribute, else the data set's default
    key: str | None = None  # None: the checkpoint's (torchscript file's) stem, or the factory spec
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    annotations: str = "auto"  # which annotation files (VOC csv | txt | xml, COCO instances | mlgcn)
    options: dict[str, Any] = field(default_factory=dict)  # the loader's keywords, e.g. difficult = "negative"

    def validate(self) -> None:
        sources.check(self.checkpoint, self.own_model())
        if self.key is None:
            object.__setattr__(self, "key", sources.default_key(self.checkpoint, self.own_model()))
        check_name(self.key, "key")
        # Keys with a place of their own in [[model]] (or none): naming them twice would be ambiguous.
        own = {"source": "; use annotations = ...", "root": "; use root = ...", "split": "; use split = ...",
               "allow_missing": "", "size": ""}
        for k in own:
            if k in self.options:
                raise UserError(f"options: {k!r} is not a loader option here{own[k]}")

    def own_model(self) -> dict[str, Any] | None:
        """Your own model's keys for engine.models.sources; None for a checkpoint of ours (as before)."""
        src = {k: getattr(self, k) for k in sources.KEYS if getattr(self, k) is not None}
        if src.get("output") == "logits":
            del src["output"]
        return src or None

    def load_kw(self) -> dict[str, Any]:
        """Keywords for the data loader (engine.data.load)."""
        return {**self.options, **({"source": self.annotations} if self.annotations != "auto" else {})}


# [protocol]: every RunSpec field but those naming what is attacked and how, so a new protocol
# field is a sweep-file key at once. [[attack]]: a RunSpec whose attack is called name, with lists
# of presets and targets.
PROTOCOL_KEYS = tuple(k for k in RunSpec.schema() if k not in ("attack", "preset", "target", "target_label", "params"))
ATTACK_SCHEMA = {"name": str, "preset": str, "presets": list, "target": str, "targets": list,
                 **{k: t for k, t in RunSpec.schema().items() if k not in ("attack", "preset", "target")}}
PROTOCOL_SCHEMA = {k: RunSpec.schema()[k] for k in PROTOCOL_KEYS}


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


class _Locator:
    """Line numbers for keys of a TOML text (tomllib gives none): search the raw text, good enough."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []  # (0-based line, table name)
        for i, ln in enumerate(self.lines):
            m = self.HEADER.match(ln)
            if m:
                self.headers.append((i, m.group(2).strip().strip("\"'")))

    def section(self, table: str | None, index: int | None = None) -> tuple[int, int]:
        """(first, end) 0-based line range of the index-th occurrence of ``table`` (None: the top)."""
        if table is None:
            return 0, self.headers[0][0] if self.headers else len(self.lines)
        hits = [k for k, (_, name) in enumerate(self.headers) if name == table]
        if not hits:
            return 0, len(self.lines)
        k = hits[min(index or 0, len(hits) - 1)]
        end = self.headers[k + 1][0] if k + 1 < len(self.headers) else len(self.lines)
        return self.headers[k][0], end

    def table_line(self, table: str, index: int | None = None) -> int | None:
        hits = [i for i, name in self.headers if name == table]
        if not hits:
            return None
        return hits[min(index or 0, len(hits) - 1)] + 1

    def key_line(self, key: str, table: str | None = None, index: int | None = None) -> int | None:
        lo, hi = self.section(table, index)
        pat = re.compile(rf"(^|[{{,\s])[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(lo, hi):
            code = self.lines[i].split("#", 1)[0]
            if pat.search(code):
                return i + 1
        return self.table_line(table, index) if table else None


def _named_key(msg: str, keys) -> str | None:
    """The key an error message is about: the one it names first (as a whole word)."""
    hits = [(m.start(), k) for k in keys for m in [re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", msg)] if m]
    return min(hits)[1] if hits else None


class _Checker:
    """Turns the config classes' errors into ``file:line: message``."""

    def __init__(self, path: str, text: str):
        self.path, self.loc = path, _Locator(text)

    def fail(self, msg: str, line: int | None) -> None:
        raise UserError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")

    def keys(self, data: dict, schema: dict, where: str, table: str, index: int | None = None,
             required: tuple[str, str] | None = None) -> int | None:
        """Unknown keys, values of the wrong type, the ``required`` (key, what to write) key.
        Returns the table's line."""
        for k in data:
            if k not in schema:
                self.fail(f"unknown key {k!r} in {where}; allowed: {', '.join(schema)}",
                          self.loc.key_line(k, table, index))
        for k, v in data.items():
            t = schema[k]
            if not is_a(v, t):
                self.fail(f"{where} {k} must be {TYPE_NAMES[t]}, got {v!r}", self.loc.key_line(k, table, index))
        line = self.loc.table_line(table, index)
        if required is not None and required[0] not in data:
            self.fail(f"{where} needs {required[0]} = {required[1]}", line)
        return line

    def build(self, cls: type[Config], values: dict, where: str, places: list[tuple[dict, str, int | None]],
              line: int | None):
        """``cls.from_dict(values)``; an error is reported at the key it names, looked up in ``places``
        ((table data, table name, index) in order), else at ``line``."""
        try:
            return cls.from_dict(values)
        except UserError as e:
            msg = str(e)
            for data, table, index in places:
                k = _named_key(msg, list(data) + list(data.get("params", {}) if table == "attack" else []))
                if k is not None:
                    self.fail(f"{where}: {msg}", self.loc.key_line(k, table, index))
            self.fail(f"{where}: {msg}", line)

    def choice(self, value: Any, allowed, what: str, line: int | None, of: str = "") -> None:
        if value not in allowed:
            self.fail(f"unknown {what} {value!r}{of}; allowed: {', '.join(map(str, allowed))}", line)


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
    ck = _Checker(str(path), text)
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
    line = ck.keys(meta, SweepSettings.schema(), "[sweep]", "sweep")
    settings = ck.build(SweepSettings, meta, "[sweep]", [(meta, "sweep", None)], line)
    base = (path.parent / Path(settings.base).expanduser()).resolve()

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        q = Path(value).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    proto = data.get("protocol", {})
    ck.keys(proto, PROTOCOL_SCHEMA, "[protocol]", "protocol")
    models = _models(ck, data.get("model", []), resolve, datasets, check_files)
    runs = _attacks(ck, data.get("attack", []), proto)
    entries = [RunEntry(model=mi, spec=rs, line=line) for mi in range(len(models)) for rs, line in runs]
    if len(entries) > settings.max_runs and not yes:
        ck.fail(f"the sweep makes {len(entries)} runs ({len(runs)} per model x {len(models)} models), more than "
                f"[sweep] max_runs = {settings.max_runs}: check its grids, then pass --yes (or raise max_runs)",
                loc.key_line("max_runs", "sweep"))
    return Sweep(name=settings.name or path.stem, path=str(path.resolve()), text=text, models=models, runs=entries,
                 settings=settings)


def _models(ck: _Checker, tables: list[dict], resolve, datasets: list[str] | None,
            check_files: bool) -> list[ModelEntry]:
    loc = ck.loc
    known_ds = list(datasets) if datasets is not None else data_mod.names()
    models: list[ModelEntry] = []
    seen: dict[tuple, int] = {}
    for i, m in enumerate(tables):
        where = f"[[model]] #{i + 1}"
        line = ck.keys(m, ModelEntry.schema(), where, "model", i)
        if not any(m.get(k) for k in ("checkpoint", *sources.OWN)):
            ck.fail(f'{where} needs checkpoint = "path/to/model.pt" (or your own model: factory = "module:function", '
                    f'torchscript = "file" or torchvision = "arch" with a checkpoint)', line)
        paths = {k: resolve(m.get(k)) for k in ("checkpoint", "torchscript", "root")}
        if isinstance(m.get("label_names"), str):
            paths["label_names"] = resolve(m["label_names"])
        entry = ck.build(ModelEntry, {**m, **paths}, where, [(m, "model", i)], line)
        if check_files:
            _model_files(ck, entry, where, i)
        if entry.dataset is not None:
            ck.choice(entry.dataset, known_ds, "dataset", loc.key_line("dataset", "model", i))
        ident = (entry.key, entry.dataset, entry.split)
        if ident in seen:
            ck.fail(f"{where} repeats [[model]] #{seen[ident] + 1} (same key {entry.key!r}, dataset and split); "
                    f"give one of them another key", line)
        seen[ident] = i
        models.append(entry)
    if not models:
        ck.fail("no [[model]] tables: a sweep needs at least one model", None)
    return models


def _model_files(ck: _Checker, entry: ModelEntry, where: str, i: int) -> None:
    """The model's files exist and a factory's module imports here, in the driver (each actor
    imports it again before its first job: engine.runtime.sweep.worker)."""
    for k in ("checkpoint", "torchscript", "label_names"):
        v = getattr(entry, k)
        if isinstance(v, str) and not Path(v).is_file():
            ck.fail(f"{where}: {k} {v} not found", ck.loc.key_line(k, "model", i))
    if entry.factory is not None:
        try:
            sources.import_factory(entry.factory)
        except UserError as e:
            ck.fail(f"{where}: {e}", ck.loc.key_line("factory", "model", i))


def _attacks(ck: _Checker, tables: list[dict], proto: dict) -> list[tuple[RunSpec, int | None]]:
    loc = ck.loc
    known = attacks.names()
    out: list[tuple[RunSpec, int | None]] = []
    seen: dict[str, int] = {}
    for i, a in enumerate(tables):
        where = f"[[attack]] #{i + 1}"
        line = ck.keys(a, ATTACK_SCHEMA, where, "attack", i, required=("name", f"one of: {', '.join(known)}"))
        name = attacks.registry.ALIASES.get(a["name"].lower(), a["name"].lower())
        ck.choice(name, known, "attack", loc.key_line("name", "attack", i))
        spec = attacks.get(name)
        where = f"{where} ({name})"
        for one, many in (("preset", "presets"), ("target", "targets")):
            if one in a and many in a:
                ck.fail(f"{where}: give either {one} or {many}, not both", loc.key_line(many, "attack", i))
        presets = a.get("presets", [a["preset"]] if "preset" in a else ["paper"])
        targets = a.get("targets", [a["target"]] if "target" in a else ["show-many"])
        for pr in presets:
            ck.choice(pr, list(spec.presets), "preset",
                      loc.key_line("presets" if "presets" in a else "preset", "attack", i), of=f" for {name}")
        for tg in targets:
            ck.choice(tg, attacks.targets.names(), "target",
                      loc.key_line("targets" if "targets" in a else "target", "attack", i))
        common = {k: a[k] if k in a else proto[k] for k in PROTOCOL_KEYS if k in a or k in proto}
        for pr in presets:
            for tg in targets:
                for params in _grid(ck, spec, a.get("params", {}), where, i):
                    values = {**common, "attack": name, "preset": pr, "target": tg, "params": params,
                              "target_label": a.get("target_label")}
                    rs = ck.build(RunSpec, values, where, [(a, "attack", i), (proto, "protocol", None)], line)
                    if rs.key in seen:
                        ck.fail(f"{where} repeats run {rs.key!r} of [[attack]] #{seen[rs.key] + 1}; change its "
                                f"preset, target, target_label or params", line)
                    seen[rs.key] = i
                    out.append((rs, line))
    if not out:
        ck.fail(f"no [[attack]] tables: a sweep needs at least one attack (one of: {', '.join(known)})", None)
    return out


def _grid(ck: _Checker, spec, params: dict, where: str, index: int) -> list[dict]:
    """The parameter sets of one [[attack]]: a list where the parameter takes one value is an axis,
    and the axes' cartesian product is the runs (first key outermost, as the file lists them)."""
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
