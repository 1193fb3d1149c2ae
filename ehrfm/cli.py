"""``ehrfm <stage>``: one subcommand per stage, generated from the stage's typed config (jsonargparse).

Every stage is ``run(cfg: <Stage>Config, layout: Layout) -> <Stage>Summary``. Its flags are the fields of
:class:`~ehrfm.layout.Layout` (``--root``, ``--meds``, ...) and of its config dataclass (dotted for sections:
``--trainer.max_steps 500``), each with the field's docstring as help; ``--config file.yaml`` reads any of
them from YAML (later flags override it) and ``--print_config`` prints the resolved YAML and exits.

Only the config modules (``ehrfm.config.*``: no torch, Spark, MLflow or sklearn) are imported to build the
parser, so ``ehrfm --help`` and ``ehrfm <stage> --help`` are fast; a stage's runner module, and with it the
heavy libraries, is imported only when that stage runs.

Why jsonargparse: it is what LightningCLI is built on (the interface our users know from Lightning), it reads
dataclass fields, their types and attribute docstrings, handles nested sections, config files, dotted
overrides and ``--print_config``, is pure Python with two small dependencies and imports in ~0.1 s.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ehrfm import __version__
from ehrfm.config.base import ConfigBase, ConfigError
from ehrfm.layout import Layout


@dataclass(frozen=True)
class Stage:
    """One ``ehrfm`` subcommand: its config class and runner, as ``module:attribute`` strings."""

    name: str
    """Subcommand path, e.g. ``label`` or ``ingest fhir``."""
    config: str
    """``module:Class`` of the stage's config dataclass (a light module)."""
    runner: str
    """``module:function`` with signature ``run(cfg, layout) -> summary`` (imported only to run)."""
    help: str
    """One line for ``ehrfm --help``."""
    root: str = "."
    """Default pipeline root of this stage (``--root``)."""

    def config_class(self) -> type[ConfigBase]:
        """The config dataclass."""
        return _resolve(self.config)  # type: ignore[no-any-return]

    def run_function(self) -> Callable[[Any, Layout], Any]:
        """The runner (imports the stage's heavy modules)."""
        return _resolve(self.runner)  # type: ignore[no-any-return]


STAGES: tuple[Stage, ...] = (
    Stage("synth", "ehrfm.config.synth:SynthConfig", "ehrfm.synth.stage:run",
          "generate a synthetic FHIR R4 population with planted, documented risk"),
    Stage("ingest fhir", "ehrfm.config.ingest:FhirIngestConfig", "ehrfm.ingest.fhir.stage:run",
          "FHIR R4 Bundles / NDJSON -> MEDS events on disk (local processes, or Spark: --engine)"),
    Stage("ingest mimic", "ehrfm.config.ingest:MimicIngestConfig", "ehrfm.ingest.mimic.stage:run",
          "MIMIC-IV hosp/icu CSV -> MEDS events on disk (polars, or Spark: --engine)"),
    Stage("ingest meds", "ehrfm.config.ingest:MedsIngestConfig", "ehrfm.ingest.meds_stage:run",
          "an existing MEDS events table -> an ehrfm MEDS dataset (Spark)"),
    Stage("label", "ehrfm.config.label:LabelConfig", "ehrfm.labels.stage:run",
          "label tables from the task specifications (polars, or Spark: --engine)"),
    Stage("prepare", "ehrfm.config.prepare:PrepareConfig", "ehrfm.prepare.stage:run",
          "vocabulary and numeric-value bins fitted on the train split"),
    Stage("tokenize", "ehrfm.config.tokenize:TokenizeConfig", "ehrfm.tokenize.stage:run",
          "token-stream parquet: pretraining rows and task rows (Spark)"),
    Stage("pretrain", "ehrfm.config.train:PretrainConfig", "ehrfm.train.stage:run_pretrain",
          "next-token pretraining (Lightning, MLflow)"),
    Stage("finetune", "ehrfm.config.train:FinetuneConfig", "ehrfm.train.stage:run_finetune",
          "multitask prompted finetuning"),
    Stage("simulate", "ehrfm.config.simulate:SimulateConfig", "ehrfm.simulate.stage:run",
          "zero-shot risk from M futures sampled by the pretrained model (no finetuning)"),
    Stage("evaluate", "ehrfm.config.evaluate:EvaluateConfig", "ehrfm.evaluate.stage:run",
          "metrics with CIs, calibration, subgroups, supervised baselines"),
    Stage("explain", "ehrfm.config.explain:ExplainConfig", "ehrfm.explain.stage:run",
          "integrated-gradients attributions: top codes per task with CIs (completeness checked)"),
    Stage("register", "ehrfm.config.serve:RegisterConfig", "ehrfm.serve.stage:run_register",
          "register a finetuned model in the MLflow registry (self-contained)"),
    Stage("score", "ehrfm.config.serve:ScoreConfig", "ehrfm.serve.stage:run_score",
          "batch-score a population with a registered model (Spark)"),
    Stage("serve", "ehrfm.config.server:ServerConfig", "ehrfm.serve.server.stage:run",
          "serve a registered model over HTTP: MLflow protocol, FHIR $risk, CDS Hooks (hardened)"),
    Stage("demo", "ehrfm.config.demo:DemoConfig", "ehrfm.demo:run",
          "the end-to-end demo on the embedded defaults", root="demo_out"),
)


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def stage(name: str) -> Stage:
    """The registered stage called ``name`` (``"ingest fhir"`` for a nested one)."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; known: {[s.name for s in STAGES]}")


_LAYOUT_KEYS = tuple(f for f in Layout.__dataclass_fields__)


def stage_parser(st: Stage) -> Any:
    """The jsonargparse parser of one stage: ``--config``, ``--print_config``, Layout and config fields."""
    from jsonargparse import ActionConfigFile, ArgumentParser  # type: ignore[attr-defined]

    cls = st.config_class()
    doc = " ".join((cls.__doc__ or st.help).strip().split("\n\n")[0].split())  # the first paragraph
    parser = ArgumentParser(prog=f"ehrfm {st.name}", description=doc, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_class_arguments(Layout, None, sub_configs=True)
    parser.add_class_arguments(cls, None, sub_configs=True)
    parser.set_defaults(root=st.root)
    return parser


def _wanted(st: Stage, argv: Sequence[str] | None) -> bool:
    """Whether ``argv`` may select stage ``st`` (``None``: any stage)."""
    if argv is None:
        return True
    head, _, tail = st.name.partition(" ")
    if not argv or argv[0] != head:
        return False
    return not tail or len(argv) < 2 or argv[1] == tail or argv[1].startswith("-")


def build_parser(argv: Sequence[str] | None = None) -> Any:
    """The top-level ``ehrfm`` parser with one subcommand per stage (``ingest`` has nested ones).

    With ``argv``, only the stage it names gets its full parser (building all sixteen costs ~0.5 s of CPU,
    more than a small ``ehrfm label --engine local`` run); every other stage gets a placeholder that keeps
    its name and help line for ``ehrfm --help``."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    # Config sections are plain nested groups (--trainer.max_steps), never "pick a subclass" arguments.
    set_parsing_settings(docstring_parse_attribute_docstrings=True,
                         subclasses_disabled=[lambda cls: isinstance(cls, type)
                                              and issubclass(cls, ConfigBase)])
    parser = ArgumentParser(prog="ehrfm", description="EHR foundation-model toolkit", exit_on_error=True)
    parser.add_argument("--version", action="version", version=f"ehrfm {__version__}")
    subs = parser.add_subcommands(dest="stage", required=True)
    groups: dict[str, Any] = {}
    def parser_of(st: Stage) -> Any:
        if _wanted(st, argv):
            return stage_parser(st)
        return ArgumentParser(prog=f"ehrfm {st.name}", description=st.help)

    for st in STAGES:
        head, _, tail = st.name.partition(" ")
        if not tail:
            subs.add_subcommand(head, parser_of(st), help=st.help)
            continue
        if head not in groups:
            group = ArgumentParser(prog=f"ehrfm {head}", description=f"ehrfm {head} <source>")
            # jsonargparse wants subcommands added in level order: the group first, then its own subcommands
            subs.add_subcommand(head, group, help=f"{head}: " + ", ".join(
                s.name.partition(" ")[2] for s in STAGES if s.name.startswith(head + " ")))
            groups[head] = (group, group.add_subcommands(dest="source", required=True))
        groups[head][1].add_subcommand(tail, parser_of(st), help=st.help)
    return parser


def split_namespace(st: Stage, values: dict[str, Any]) -> tuple[ConfigBase, Layout]:
    """Parsed values of one stage -> (validated config, layout); :class:`ConfigError` names a bad field."""
    values = {k: v for k, v in values.items() if k not in ("config", "__default_config__")}
    layout = Layout.from_dict({k: values.pop(k) for k in _LAYOUT_KEYS if k in values})
    return st.config_class().from_dict(values), layout


def run_stage(name: str, cfg: ConfigBase, layout: Layout) -> Any:
    """Run one stage by name (what the CLI, the etl/ jobs and the demo call)."""
    return stage(name).run_function()(cfg, layout)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ehrfm`` console script (and of the etl/ jobs, with their stage name first)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args)
    ns = parser.parse_args(args)
    name = ns.stage
    values = ns[name]
    if name in ("ingest",):
        source = values.source
        name, values = f"{name} {source}", values[source]
    st = stage(name)
    try:
        cfg, layout = split_namespace(st, values.as_dict())
    except ConfigError as exc:
        print(f"ehrfm {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_stage(name, cfg, layout)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"ehrfm {name}: error: {exc}", file=sys.stderr)
        return 2
    return 1 if getattr(summary, "ok", True) is False else 0


if __name__ == "__main__":
    sys.exit(main())
