"""The end-to-end pipeline as data: a list of (title, stage, config) steps over one
:class:`~ehrfm.layout.Layout`.

``ehrfm demo`` runs the steps in-process (:func:`ehrfm.cli.run_stage`); the notebooks run the same steps as
``ehrfm <stage> --config <step>.yaml --root <workdir>`` child processes (:mod:`ehrfm.notebook.pipeline`),
so both
build the same folders from the same configs. Light: imports configs only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehrfm.config.base import ConfigBase
from ehrfm.config.demo import DemoConfig
from ehrfm.config.evaluate import EvaluateConfig
from ehrfm.config.ingest import FhirIngestConfig, MimicIngestConfig
from ehrfm.config.label import LabelConfig
from ehrfm.config.prepare import PrepareConfig
from ehrfm.config.serve import RegisterConfig
from ehrfm.config.synth import SynthConfig
from ehrfm.config.tokenize import TokenizeConfig, TokenizerConfig
from ehrfm.config.train import FinetuneConfig, PretrainConfig


@dataclass(frozen=True)
class PipelineStep:
    """One step: a title, the ``ehrfm`` stage name and its config."""

    key: str
    """Short name (synth, ingest, label, prepare, tokenize, pretrain, finetune, evaluate, register)."""
    title: str
    """What the step does, for logs and tables."""
    stage: str
    """Registered stage name (``ehrfm.cli.STAGES``)."""
    config: ConfigBase
    """The stage's config."""


def _cadence(steps: int) -> dict[str, int]:
    every = max(1, min(50, steps))
    return {"trainer.max_steps": steps, "trainer.val_check_interval": every,
            "trainer.checkpoint_every_n_steps": every}


def pipeline_steps(cfg: DemoConfig, progress: bool = True) -> list[PipelineStep]:
    """The steps of the pipeline ``cfg`` describes, in order (register last)."""
    steps: list[PipelineStep] = []
    if cfg.mimic:
        steps.append(PipelineStep("ingest", f"ingest (MIMIC-IV, {cfg.engine})", "ingest mimic",
                                  MimicIngestConfig(input=cfg.mimic, engine=cfg.engine, spark=cfg.spark)))
    else:
        if cfg.synthetic:
            steps.append(PipelineStep("synth", "synthetic FHIR population", "synth",
                                      SynthConfig(n_patients=cfg.n_patients, seed=cfg.seed,
                                                  progress=progress)))
        steps.append(PipelineStep("ingest", f"ingest (FHIR R4, {cfg.engine})", "ingest fhir",
                                  FhirIngestConfig(input=list(cfg.fhir), max_time=cfg.max_time,
                                                   engine=cfg.engine, spark=cfg.spark)))
    tasks = list(cfg.tasks)
    steps += [
        PipelineStep("label", f"labels ({cfg.engine})", "label",
                     LabelConfig(tasks=tasks, engine=cfg.engine, spark=cfg.spark)),
        PipelineStep("prepare", "vocabulary + bins (train split)", "prepare",
                     PrepareConfig(tasks=tasks, engine=cfg.engine, spark=cfg.spark)),
        PipelineStep("tokenize", f"tokenize ({cfg.engine})", "tokenize",
                     TokenizeConfig(tokenizer=TokenizerConfig(max_len=cfg.max_len), tasks=tasks,
                                    engine=cfg.engine,
                                    spark=cfg.spark)),
        PipelineStep("pretrain", "pretrain (tiny)", "pretrain",
                     PretrainConfig().replace(**_cadence(cfg.pretrain_steps))),
    ]
    if cfg.finetune_steps > 0:
        ft = FinetuneConfig(tasks=list(cfg.finetune_tasks or tasks)).replace(**_cadence(cfg.finetune_steps))
        steps.append(PipelineStep("finetune", "finetune (multitask prompted)", "finetune", ft))
    if cfg.evaluate:
        ev = EvaluateConfig(tasks=tasks).replace(**{"report.n_boot": cfg.bootstrap,
                                                    "report.baselines": ["lr", "hgb", "cox"]})
        steps.append(PipelineStep("evaluate", "evaluate (model + baselines)", "evaluate", ev))
    if cfg.register and cfg.finetune_steps > 0:
        steps.append(PipelineStep("register", "register (MLflow registry)", "register", RegisterConfig()))
    return steps
