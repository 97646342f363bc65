"""One validation path: every numeric field declares its range where it is defined (engine.config.param),
and the Python API, the CLI and sweep files all refuse a value outside it the same way: one
UserError whose ``key`` is the field, one line and exit 2 on the command line, the line of the key
in a sweep file, and nothing written. Driven by the registry: a new attack is checked without
editing a list here."""

from __future__ import annotations

import math

import pytest

import cli.commands
import cli.main
from engine import attacks
from engine.config import (
    Config,
    DemoDataConfig,
    LossConfig,
    ModelConfig,
    ProtocolConfig,
    Rule,
    RunConfig,
    TrainConfig,
    param,
)
from engine.errors import UserError, keyed
from engine.runtime.runspec import RunSpec
from engine.runtime.sweep.sweepfile import ModelEntry, SweepSettings, load_sweep


def _outside(rule: Rule, integer: bool) -> list:
    """The values just outside each declared bound (for floats the nearest float past it)."""
    out = []
    if rule.ge is not None:
        out.append(rule.ge - 1 if integer else math.nextafter(rule.ge, -math.inf))
    if rule.gt is not None:
        out.append(rule.gt)
    if rule.le is not None:
        out.append(rule.le + 1 if integer else math.nextafter(rule.le, math.inf))
    if rule.lt is not None:
        out.append(rule.lt)
    return out


def _numeric(cls: type[Config]) -> list[tuple[str, bool]]:
    """(field, is an integer) for the numeric fields of ``cls``."""
    return [(k, t is int) for k, t in cls.schema().items() if t in (int, float)]


def _cases(cls: type[Config]) -> list[tuple[str, object, Rule]]:
    rules = cls.field_rules()
    return [(k, v, rules[k]) for k, integer in _numeric(cls) for v in _outside(rules[k], integer)]


ATTACK_CASES = [(name, k, v, rule) for name in attacks.names() for k, v, rule in _cases(attacks.get(name).config)]
CASE_IDS = [f"{a}-{k}={v!r}" for a, k, v, _ in ATTACK_CASES]


# ---------------------------------------------------------------- the checks every attack gets
# The tests below run these over the registry; a test can run them for any registered name
# (tests/test_recipe.py does, for the development page's example attacks): check_attack_validation.
def check_attack_declares_its_ranges(name):
    cfg = attacks.get(name).config
    undeclared = [k for k, _ in _numeric(cfg) if not cfg.field_rules()[k].bounded]
    assert undeclared == [], f"{name}: numeric fields without a declared range (engine.config.param)"
    assert all(cfg.field_rules()[k].doc for k in cfg.field_names()), f"{name}: a field without a doc"
    for preset in attacks.get(name).presets:  # every preset is inside the ranges
        attacks.make_config(name, preset)


def check_value_outside_its_range(name, key, value, rule):
    """The Python API and a run spec refuse ``value`` for field ``key``, naming the field."""
    integer = attacks.get(name).config.schema()[key] is int
    with pytest.raises(UserError) as e:
        attacks.make_config(name, **{key: value})
    assert e.value.key == key
    assert f"{key} must be {rule.expected(integer)}" in str(e.value), str(e.value)
    # Through a run spec the key says where the field sits.
    with pytest.raises(UserError) as e:
        RunSpec.from_dict({"attack": name, "params": {key: value}})
    assert e.value.key == f"params.{key}"


def check_non_finite_floats_refused(name):
    cfg = attacks.get(name).config
    floats = [k for k, t in cfg.schema().items() if t is float]
    for k in floats:
        for v in (math.nan, math.inf, -math.inf):
            with pytest.raises(UserError, match=f"{k} must be a finite number") as e:
                attacks.make_config(name, **{k: v})
            assert e.value.key == k


def check_cli_refuses_a_value_outside_its_range(name, key, value, folder, capsys):
    """Before anything is loaded (the checkpoint does not even exist) and with nothing written in
    ``folder`` (empty before)."""
    out = folder / "x.zarr"
    rc, err = _sml(capsys, "attack", "--checkpoint", folder / "none.pt", "--attack", name, "--out", out,
                   "--param", f"{key}={value!r}", "--no-progress")
    assert rc == 2 and err.startswith("sml: error: ") and "\n" not in err, err
    assert f"{key} must be" in err and "checkpoint" not in err, err
    assert not out.exists() and list(folder.iterdir()) == []


def check_sweep_file_names_the_line(name, folder):
    """A sweep file with the attack's first out-of-range value: the error names its line."""
    cases = _cases(attacks.get(name).config)
    key, value, _ = cases[0]
    (folder / "m.pt").write_bytes(b"")
    text = ('[sweep]\nbase = "."\n\n[[model]]\ncheckpoint = "m.pt"\n\n[[attack]]\nname = "fgsm"\n\n'
            f'[[attack]]\nname = "{name}"\npresets = ["paper"]\nparams = {{ {key} = {value!r} }}\n')
    (folder / "s.toml").write_text(text)
    with pytest.raises(UserError) as e:
        load_sweep(folder / "s.toml")
    assert str(e.value).startswith(f"{folder / 's.toml'}:13: [[attack]] #2 ({name}): "), str(e.value)
    assert f"{key} must be" in str(e.value)


def check_attack_validation(name, tmp_path, capsys):
    """Every check above, for registered attack ``name``, over every field it declares."""
    check_attack_declares_its_ranges(name)
    check_non_finite_floats_refused(name)
    cases = _cases(attacks.get(name).config)
    assert cases, f"{name}: no numeric field to check"
    for i, (key, value, rule) in enumerate(cases):
        check_value_outside_its_range(name, key, value, rule)
        folder = tmp_path / f"cli-{i}"
        folder.mkdir()
        check_cli_refuses_a_value_outside_its_range(name, key, value, folder, capsys)
    folder = tmp_path / "sweep"
    folder.mkdir()
    check_sweep_file_names_the_line(name, folder)


def _sml(capsys, *argv) -> tuple[int, str]:
    rc = cli.main.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- declarations
@pytest.mark.parametrize("name", attacks.names())
def test_every_numeric_attack_field_declares_its_range(name):
    check_attack_declares_its_ranges(name)


@pytest.mark.parametrize("cls", [ProtocolConfig, DemoDataConfig, ModelConfig, TrainConfig, LossConfig,
                                 SweepSettings])
def test_every_numeric_config_field_declares_its_range(cls):
    assert [k for k, _ in _numeric(cls) if not cls.field_rules()[k].bounded] == []
    cls()  # the defaults are inside


def test_the_reported_cases_have_their_ranges():
    """lr = -1 used to end in the optimizer's traceback, initial_const = -5 ran for minutes and scored 0,
    overshoot = -1 was accepted."""
    for name, kw, text in (("mlcw", {"lr": -1}, "lr must be > 0, got -1.0"),
                           ("mlcw", {"initial_const": -5}, "initial_const must be > 0, got -5.0"),
                           ("mldp", {"overshoot": -1}, "overshoot must be >= 0, got -1.0"),
                           ("mlcw", {"binary_steps": 65}, "binary_steps must be in 1..64, got 65"),
                           ("mifgsm", {"decay": -0.5}, "decay must be >= 0"),
                           ("slide", {"sparsity": 0}, r"sparsity must be in (0, 1), got 0")):
        with pytest.raises(UserError) as e:
            attacks.make_config(name, **kw)
        assert e.value.key == next(iter(kw)) and text in str(e.value), str(e.value)


# ---------------------------------------------------------------- the Python API
@pytest.mark.parametrize("name,key,value,rule", ATTACK_CASES, ids=CASE_IDS)
def test_attack_value_outside_its_range_names_the_field(name, key, value, rule):
    check_value_outside_its_range(name, key, value, rule)


@pytest.mark.parametrize("name", attacks.names())
def test_non_finite_floats_are_refused(name):
    check_non_finite_floats_refused(name)


@pytest.mark.parametrize("cls", [ProtocolConfig, DemoDataConfig, ModelConfig, TrainConfig, LossConfig,
                                 SweepSettings, ModelEntry])
def test_config_value_outside_its_range_names_the_field(cls):
    cases = _cases(cls)
    assert cases
    for key, value, rule in cases:
        with pytest.raises(UserError) as e:
            cls.from_dict({key: value})
        assert e.value.key == key and rule.expected(cls.schema()[key] is int) in str(e.value), str(e.value)


def test_types_choices_and_cross_field_rules_carry_the_key():
    for build, key in ((lambda: TrainConfig(lr="fast"), "lr"),  # the type, also without from_dict
                       (lambda: TrainConfig(lr=None), "lr"),
                       (lambda: ModelConfig(normalization="z"), "normalization"),
                       (lambda: ProtocolConfig(order="random"), "order"),
                       (lambda: TrainConfig(grad_clip=math.nan), "grad_clip"),
                       (lambda: attacks.make_config("mlalp", threshold=0.8), "threshold_max_shift"),
                       (lambda: attacks.make_config("mlalp", "released", threshold_step=0.2), "threshold_step"),
                       (lambda: RunSpec(attack="nope"), "attack"),
                       (lambda: RunSpec(attack="pgd", preset="fast"), "preset"),
                       (lambda: RunSpec(attack="pgd", target="show-all"), "target"),
                       (lambda: RunSpec(attack="pgd", target="reduction"), "target_label"),
                       (lambda: RunSpec.from_dict({"attack": "pgd", "params": {"epz": 1}}), "params.epz"),
                       (lambda: SweepSettings(cpu_attacks=("nope",)), "cpu_attacks")):
        with pytest.raises(UserError) as e:
            build()
        assert e.value.key == key, (key, str(e.value))
    assert TrainConfig(grad_clip=math.inf).grad_clip == math.inf  # declared finite=False: "no clipping"


def test_keyed_prefixes_the_field_that_holds_the_object():
    with pytest.raises(UserError) as e, keyed("params"):
        raise UserError("x", key="eps")
    assert e.value.key == "params.eps"
    with pytest.raises(UserError) as e, keyed("attack"):
        raise UserError("unknown attack")
    assert e.value.key == "attack"


def test_param_declares_and_describes():
    rule = Rule(ge=1, le=64)
    assert (rule.expected(integer=True), Rule(gt=0, lt=1).expected(), Rule(ge=0, lt=0.5).expected(),
            Rule(gt=0).expected()) == ("in 1..64", "in (0, 1)", "in [0, 0.5)", "> 0")
    f = param(3, ge=1, doc="d")
    assert f.default == 3 and f.metadata["rule"] == Rule(ge=1, doc="d")


# ---------------------------------------------------------------- the CLI
@pytest.mark.parametrize("name,key,value,rule", ATTACK_CASES, ids=CASE_IDS)
def test_cli_refuses_an_attack_value_outside_its_range(tmp_path, capsys, name, key, value, rule):
    check_cli_refuses_a_value_outside_its_range(name, key, value, tmp_path, capsys)


@pytest.mark.parametrize("name,kw", [("mlcw", "lr=-1"), ("mlcw", "initial_const=-5"), ("mldp", "overshoot=-1")])
def test_reported_cli_cases_stop_before_any_work(trained, demo_root, tmp_path, capsys, name, kw):
    out = tmp_path / "x.zarr"
    rc, err = _sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--root", demo_root, "--attack", name,
                   "--preset", "demo" if name == "mlcw" else "paper", "--out", out, "--param", kw, "--no-progress")
    assert rc == 2 and "\n" not in err and f"attack {name}: {kw.split('=')[0]} must be" in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv,text,made", [
    (["data", "demo", "--size", "8"], "size must be in 16..1024, got 8", "d"),
    (["data", "demo", "--labels", "100"], "labels must be in 4..80, got 100", "d"),
    (["train", "--model", "mlgcn", "--root", "nodata", "--lr", "-1"], "lr must be > 0, got -1.0", "m.pt"),
    (["train", "--model", "mlgcn", "--root", "nodata", "--momentum", "1"], "momentum must be in [0, 1), got 1.0",
     "m.pt"),
    (["train", "--model", "mlknn", "--root", "nodata"], "unknown family 'mlknn'; valid: mlgcn, mlliw", "m.pt"),
    (["attack", "--checkpoint", "none.pt", "--attack", "pgd", "--exit-every", "0"],
     "exit_every must be in 1..1000000, got 0", "x.zarr"),
])
def test_cli_config_flags_are_checked_by_their_config(tmp_path, capsys, monkeypatch, argv, text, made):
    monkeypatch.chdir(tmp_path)
    rc, err = _sml(capsys, *argv, "--out", made)
    assert rc == 2 and "\n" not in err and text in err, err
    assert not (tmp_path / made).exists()


def test_cli_flags_come_from_the_declarations():
    """A flag per field, its default the config's: nothing given gives the config's defaults."""
    parser = cli.main.build_parser()
    a = parser.parse_args(["data", "demo", "--out", "d"])
    assert DemoDataConfig.from_dict(cli.commands.given(a, DemoDataConfig)) == DemoDataConfig()
    a = parser.parse_args(["data", "demo", "--out", "d", "--n-train", "7"])
    assert cli.commands.given(a, DemoDataConfig) == {"n_train": 7}
    a = parser.parse_args(["attack", "--attack", "pgd", "--out", "x"])
    assert cli.commands.given(a, RunConfig, skip=("attack",)) == {}
    flags = ["--" + k.replace("_", "-") for k in ProtocolConfig.field_names()]
    argv = ["attack", "--attack", "pgd", "--out", "x"]
    for k, flag in zip(ProtocolConfig.field_names(), flags):
        t = ProtocolConfig.schema()[k]
        argv += [flag] if t is bool else [flag, {"order": "first", "rounding": "floor"}.get(k, "3")]
    given = cli.commands.given(parser.parse_args(argv), ProtocolConfig)
    assert set(given) == set(ProtocolConfig.field_names())
    ProtocolConfig.from_dict(given)
    a = parser.parse_args(["train", "--model", "mlgcn", "--root", "r", "--out", "o", "--no-augment", "--gcn-t", "0.3"])
    assert cli.commands.given(a, TrainConfig) == {"augment": False}
    assert cli.commands.given(a, ModelConfig) == {"gcn_t": 0.3}



def test_cli_help_shows_the_declared_ranges_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main.main(["attack", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(in 1..1000000; default 100)" in help_text and "seeded | first: sample order" in help_text


# ---------------------------------------------------------------- sweep files
@pytest.mark.parametrize("name", attacks.names())
def test_sweep_file_names_the_line_of_an_out_of_range_param(tmp_path, name):
    check_sweep_file_names_the_line(name, tmp_path)


@pytest.mark.parametrize("tables,text", [
    ('[protocol]\nseed = 0\nchunk_size = 0  # <-\n[[attack]]\nname = "pgd"\n',
     "[protocol]: chunk_size must be in 1..1000000"),
    ('[[attack]]\nname = "pgd"\nexit_every = 0  # <-\n', "exit_every must be in 1..1000000"),
    ('[[attack]]\nname = "pgd"\npresets = ["paper", "fast"]  # <-\n', "unknown preset 'fast' for pgd"),
    ('[[attack]]\nname = "pgd"\n\n[[attack]]\nname = "pgd"\ntarget = "random"\nparams = { step = -1 }  # <-\n',
     "step must be >= 0"),
    ('[[attack]]\nname = "pgd"\n[sweep]\nplacement_timeout = 0  # <-\n', "placement_timeout must be > 0"),
    ('[[attack]]\nname = "pgdd"  # <-\n', "unknown attack 'pgdd'"),
])
def test_sweep_file_errors_point_at_the_key(tmp_path, tables, text):
    text_file = '[[model]]\ncheckpoint = "m.pt"\n\n' + tables
    line = next(i for i, ln in enumerate(text_file.splitlines(), 1) if ln.endswith("# <-"))
    (tmp_path / "s.toml").write_text(text_file)
    with pytest.raises(UserError) as e:
        load_sweep(tmp_path / "s.toml", check_files=False)
    assert str(e.value).startswith(f"{tmp_path / 's.toml'}:{line}: ") and text in str(e.value), str(e.value)
