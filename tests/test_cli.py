"""The generated CLI: every stage's flags come from its config, help is fast (imports nothing heavy),
config files and --print_config round-trip, bad values are errors naming the field."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
import typing
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from ehrfm import resources
from ehrfm.cli import STAGES, build_parser, main, split_namespace, stage, stage_parser
from ehrfm.config.base import ConfigBase
from ehrfm.layout import Layout

HEAVY = ["torch", "pyspark", "mlflow", "lightning", "sklearn", "sksurv", "pandas", "numpy", "pyarrow"]


def _help(argv: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", "ehrfm.cli", *argv], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_top_level_help_lists_every_stage() -> None:
    text = _help(["--help"])
    for st in STAGES:
        assert st.name.split()[0] in text
    assert "fhir" in _help(["ingest", "--help"])


def test_help_imports_no_heavy_library() -> None:
    """``ehrfm --help`` and every ``ehrfm <stage> --help`` build from config modules only."""
    probe = (
        "import sys, json, contextlib, io\n"
        "from ehrfm.cli import main\n"
        "argvs = json.loads(sys.argv[1])\n"
        "for argv in argvs:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))\n"
    )
    argvs = [["--help"]] + [[*st.name.split(), "--help"] for st in STAGES]
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(argvs), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _fields(typing.cast(type, hint), prefix + f.name + ".")
        else:
            out.append((prefix + f.name, hint))
    return out


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_stage_help_lists_every_field_with_its_docstring(name: str) -> None:
    st = stage(name)
    build_parser()  # applies the parsing settings (attribute docstrings)
    text = " ".join(stage_parser(st).format_help().split())
    for cls in (Layout, st.config_class()):
        for key, _ in _fields(cls):
            assert f"--{key}" in text, f"{name}: --{key} missing from help"


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_every_field_has_a_docstring(name: str) -> None:
    cls = stage(name).config_class()
    missing = []
    for klass in [cls] + [typing.cast(type, h) for _, h in _nested(cls)]:
        documented: set[str] = set()
        for base in klass.__mro__:  # fields may be inherited from a base config
            if not dataclasses.is_dataclass(base):
                continue
            body = ast.parse(inspect.getsource(base)).body[0].body  # type: ignore[attr-defined]
            documented |= {
                stmt.target.id for stmt, nxt in zip(body, body[1:], strict=False)
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            }
        missing += [f"{klass.__name__}.{f.name}" for f in dataclasses.fields(klass)
                    if f.name not in documented]
    assert not missing, f"fields without a docstring: {missing}"


def _nested(cls: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.append((f.name, hints[f.name]))
            out += _nested(hints[f.name])
    return out


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_defaults_round_trip_through_yaml(name: str, tmp_path: Path) -> None:
    cls = stage(name).config_class()
    parser = build_parser()
    argv = name.split()
    ns = parser.parse_args(argv)
    values = ns
    for part in argv:
        values = values[part]
    cfg, layout = split_namespace(stage(name), values.as_dict())
    assert isinstance(cfg, cls)
    assert cls.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    cfg.save(tmp_path / "c.yaml")
    assert cls.load(tmp_path / "c.yaml") == cfg
    assert layout == Layout(root=stage(name).root)


def test_print_config_then_config_file_round_trips(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--root", str(tmp_path), "--tokenizer.max_len", "256", "--tasks", "[a,b]",
              "--print_config"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert data["tokenizer"]["max_len"] == 256 and data["tasks"] == ["a",
                                                                     "b"] and data["root"] == str(tmp_path)
    (tmp_path / "tok.yaml").write_text(text)
    ns = build_parser().parse_args(["tokenize", "--config", str(tmp_path / "tok.yaml"), "--engine", "local"])
    cfg, layout = split_namespace(stage("tokenize"), ns["tokenize"].as_dict())
    assert cfg.to_dict()["tokenizer"]["max_len"] == 256 and cfg.to_dict()["engine"] == "local"
    assert layout.root == str(tmp_path)


def test_bad_value_is_an_error_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenize", "--tokenizer.max_len", "3"]) == 2
    err = capsys.readouterr().err
    assert "max_len" in err and "3" in err
    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--tokenizer.max_len", "many"])
    assert e.value.code != 0
    assert "max_len" in capsys.readouterr().err


def test_version_is_the_installed_distribution() -> None:
    assert _help(["--version"]).strip() == f"ehrfm {metadata.version('ehrfm')}"


def test_every_shipped_preset_loads_into_its_config() -> None:
    from ehrfm.config.model import ModelConfig
    from ehrfm.config.train import FinetuneConfig, PretrainConfig

    classes: dict[str, type[ConfigBase]] = {"model": ModelConfig, "pretrain": PretrainConfig,
                                             "finetune": FinetuneConfig}
    seen = 0
    for kind in resources.PRESET_KINDS:
        for name in resources.available_presets(kind):
            cfg = classes[kind].load(resources.preset_path(kind, name))
            assert classes[kind].from_dict(cfg.to_dict()) == cfg
            seen += 1
    assert seen >= 4


def test_every_shipped_task_spec_loads() -> None:
    from ehrfm.labels.parse import available_tasks, load_tasks

    names = available_tasks()
    assert len(names) >= 6
    assert [s.name for s in load_tasks(names)] == names


def test_a_named_stage_gets_the_only_full_parser() -> None:
    """``ehrfm label …`` builds label's full parser only; the others keep their name and help line."""
    from ehrfm.cli import STAGES, _wanted, build_parser

    assert [s.name for s in STAGES if _wanted(s, ["label", "--engine", "local"])] == ["label"]
    assert [s.name for s in STAGES if _wanted(s, ["ingest", "mimic"])] == ["ingest mimic"]
    assert len([s for s in STAGES if _wanted(s, ["ingest", "--help"])]) == 3
    assert all(_wanted(s, None) for s in STAGES)
    assert not any(_wanted(s, ["--help"]) for s in STAGES)
    helps = build_parser(["label"]).format_help()
    assert all(s.name.partition(" ")[0] in helps for s in STAGES)
    ns = build_parser(["label", "--engine", "reference"]).parse_args(["label", "--engine", "reference"])
    assert ns.label.engine == "reference"
