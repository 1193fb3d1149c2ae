"""``ehrfm register`` and ``ehrfm score`` stages: ``run_register(RegisterConfig, Layout) ->
RegisterSummary`` and
``run_score(ScoreConfig, Layout) -> ScoreSummary``."""

from __future__ import annotations

import json
import os
import time

from ehrfm import storage
from ehrfm.atomic import check_meds, check_tokens, folder_outputs
from ehrfm.config.base import ConfigError
from ehrfm.config.serve import RegisterConfig, RegisterSummary, ScoreConfig, ScoreSummary, ServeConfig
from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.layout import SCORES_MARKER, TOKENS_META, TOKENS_TASKS, Layout


def _tokenizer(layout: Layout) -> TokenizerConfig:
    """The tokenizer rules recorded with the layout's tokens (defaults when there are none); the tokens
    folder may be a local path or a URI."""
    meta = storage.join(layout.tokens_uri, TOKENS_META)
    if not storage.is_file(meta):
        return TokenizerConfig()
    return TokenizerConfig.from_dict(storage.read_json(meta).get("config", {}))


def run_register(cfg: RegisterConfig, layout: Layout) -> RegisterSummary:
    """Register the finetuned model (``cfg.run`` or the layout's finetuning run), print how to serve it."""
    from ehrfm.serve.register import register

    source = cfg.run or str(layout.finetune_run.root)
    if cfg.run is None and not layout.finetune_run.root.is_dir():
        raise FileNotFoundError(f"run: no finetuning run at {layout.finetune_run.root}; pass --run or --runs")
    tokenizer = _tokenizer(layout)
    if cfg.max_len is not None:
        tokenizer = tokenizer.replace(max_len=cfg.max_len)
    serve_cfg = ServeConfig(tokenize=tokenizer, limits=cfg.limits, validate=cfg.validate, strict=cfg.strict,
                            explain=cfg.explain, explain_top_k=cfg.explain_top_k)
    tokens = layout.token_paths.root
    t0 = time.time()
    reg = register(source, cfg.name, cfg.alias, tracking_uri=cfg.tracking_uri, store_dir=layout.root_dir,
                   experiment=cfg.experiment, tokens_dir=tokens if tokens.is_dir() else None,
                   config=serve_cfg)
    print(f"registered {reg.name} version {reg.version}" + (f", alias {reg.alias}" if reg.alias else ""))
    print(f"  logged model : {reg.model_uri} (run {reg.run_id})")
    print(f"  store        : {reg.tracking_uri}")
    print(f"  serve with   : MLFLOW_TRACKING_URI={reg.tracking_uri} ehrfm serve --model {reg.serve_uri} "
          f"--host 127.0.0.1 --port 5001")
    print(f"done in {time.time() - t0:.1f} s")
    return reg


def run_score(cfg: ScoreConfig, layout: Layout) -> ScoreSummary:
    """Resolve the model, score the layout's tokens, its MEDS dataset or a folder of FHIR Bundles with
    Spark, write ``layout.scores_uri`` (FHIR: the files that could not be scored to ``cfg.rejects``,
    default ``<scores>_rejects``).

    Inputs and outputs are local folders or Hadoop-compatible URIs (``hdfs://``, ``s3a://``, ``viewfs://``
    ...): the data moves through Spark's readers and writers only, the driver reads and writes small files
    (markers, ``tokenize.json``) through :mod:`ehrfm.storage`, and relative paths are resolved here, on the
    driver. Local folders are staged and renamed into place; URIs are written in place, marker last
    (:mod:`ehrfm.atomic`)."""
    import mlflow

    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and not storage.is_remote(layout.root) and layout.mlflow_db.exists():
        uri = layout.tracking_uri()  # the embedded store lives only under a local root
    if uri:
        mlflow.set_tracking_uri(uri)
    from ehrfm.serve.score import (
        fhir_predictions,
        fhir_rejects,
        local_serving_dir,
        score_fhir,
        score_meds,
        score_tokens,
        write_predictions,
    )
    from ehrfm.spark import get_spark

    t0 = time.time()
    folder = local_serving_dir(cfg.model)  # the model (not patient data) on the driver, shipped as one file
    print(f"model {cfg.model} -> {folder}")
    spark = get_spark("ehrfm-score", master=cfg.spark.master, conf=cfg.spark.conf)
    tasks = cfg.tasks or None
    out = layout.scores_uri
    rejects_out, rejected, combined = None, 0, None
    if cfg.source == "fhir":
        assert cfg.input is not None  # ScoreConfig requires it with source=fhir
        # predictions and rejects come from one scoring pass: kept, then written as two outputs
        combined = score_fhir(spark, folder, cfg.input, cfg.prediction_time, tasks).persist()
        rejects_out = storage.normalize(cfg.rejects) if cfg.rejects else f"{out}_rejects"
        with folder_outputs(rejects_out, SCORES_MARKER, overwrite=cfg.overwrite, key="rejects") as staged:
            fhir_rejects(combined).write.mode("overwrite").parquet(storage.spark_uri(staged.path()))
            rejected = spark.read.parquet(storage.spark_uri(staged.path())).count()
            staged.publish({"rejected": rejected})
        df = fhir_predictions(combined)
    elif cfg.source == "tokens":
        tokens = layout.tokens_uri
        if not storage.is_dir(tokens):
            raise ConfigError(f"source=tokens: no tokens folder at {tokens}")
        # marker (and named task rows) first
        check_tokens(tokens, [storage.join(TOKENS_TASKS, t) for t in tasks or []])
        df = score_tokens(spark, folder, tokens, tasks, cfg.splits or None)
    else:
        check_meds(layout.meds_uri)  # a named message instead of an Arrow error
        df = score_meds(spark, folder, layout.meds_uri, cfg.prediction_time, tasks)
    # local: written under a staging folder, renamed into place with its marker; URI: in place, marker last
    with folder_outputs(out, SCORES_MARKER, overwrite=cfg.overwrite, key="scores") as staged:
        summary = write_predictions(df, staged.path())
        staged.publish({"model": cfg.model, "source": cfg.source,
                        "rows": json.loads(summary.to_json(orient="records"))})
    if combined is not None:
        combined.unpersist()
    seconds = round(time.time() - t0, 1)
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"{int(summary['rows'].sum())} predictions in {seconds} s -> {out}")
    if rejects_out is not None:
        print(f"{rejected} file(s) could not be scored -> {rejects_out}")
    return ScoreSummary(output=out, rows=json.loads(summary.to_json(orient="records")), seconds=seconds,
                        rejects=rejects_out, rejected=rejected)
