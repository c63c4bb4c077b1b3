"""The study runner (`layerwise study`, layerwise.studies): YAML validation, a 2-run x 1-seed study
run in 2 parallel processes and again sequentially with one run interrupted, skipping of finished
runs, refusal of a changed run, the report rebuilt from results.json, and the analysis stages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerwise import cli
from layerwise_core import ConfigError, MissingPathError

SMALL_VOCAB, SMALL_DOCS = 512, 20  # conftest.small_data: the tokens the session has cached

TINY_STUDY = {
    "name": "tiny",
    "description": "two tiny twins, a few steps each",
    "base": {
        "data": {"vocab_size": SMALL_VOCAB, "max_documents": SMALL_DOCS},
        "model": {"preset": "llama-tiny", "overrides": {"num_hidden_layers": 4}},
        "optimizer": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"warmup_steps": 2},
        "train": {
            "steps": 6,
            "batch_size": 4,
            "block_size": 64,
            "eval_every": 0,
            "eval_batches": 2,
            "log_every": 1,
            "precision": "no",
        },
    },
    "seeds": [0],
    "runs": {
        "ar": {"overrides": ["objective=ntp"], "tags": {"family": "ar"}},
        "dlm": {"overrides": ["objective=mdm"], "tags": {"family": "dlm"}},
    },
    "checkpoints": [0.5, 1.0],
    # 8 evaluation windows = the final validation of the run (eval_batches 2 x batch 4)
    "probe": {"calibration_windows": 4, "eval_windows": 8, "batch_size": 4, "mdm_t": [0.3, 0.8]},
    "analyses": {"loss": "loss", "wanda": {"name": "wanda", "epsilons": [0.1]}},
    "analyses_at": {"wanda": [1.0]},  # loss at both checkpoints, Wanda at the last
    "report": {
        "group_by": "family",
        "pair": {"tag": "family", "a": "dlm", "b": "ar"},
        "curves": ["grad_norm"],
        "claims": [
            {
                "text": "DLM hurt less by Wanda",
                "metric": "wanda/uniform/rel_increase",
                "expect": "lower",
                "group": "dlm",
                "min_checkpoints": 1,
            }
        ],
    },
}


def write_study(path: Path, study: dict = TINY_STUDY) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def study_cli(*args: str) -> int:
    return cli.main(["study", *map(str, args)])


def without_timing(results: dict) -> dict:
    results = json.loads(json.dumps(results))
    for run in results["runs"].values():
        for entry in run["seeds"].values():
            entry.pop("timing")
    return results


def final_weights(run_folder: Path) -> dict[str, torch.Tensor]:
    from layerwise.train import latest_checkpoint, read_model_state

    return read_model_state(latest_checkpoint(run_folder / "checkpoints"))


def snapshot(folder: Path) -> dict[str, int]:
    """mtime (ns) of every file under `folder`."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the YAML ----------------------------------------------------------------------------------


def _with(**changes) -> dict:
    study = json.loads(json.dumps(TINY_STUDY))
    for dotted, value in changes.items():
        node = study
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return study


@pytest.mark.parametrize(
    ("study", "message"),
    [
        (_with(runz={}), "unknown field 'runz' (did you mean 'runs'?)"),
        (
            _with(runs={"ar": {"overrides": ["optimizer.lrr=1e-3"]}}),
            "run 'ar': invalid PretrainConfig: unknown field 'optimizer.lrr'",
        ),
        (
            _with(runs={"ar": {"overrides": ["train.seed=3"]}}),
            "runs.ar.overrides sets train.seed, which the study runner sets",
        ),
        (_with(checkpoints=[0.25, 1.0]), "checkpoint fraction 0.25 of train.steps=6"),
        (_with(checkpoints=[1.5]), "fractions of train.steps must lie in (0, 1]"),
        (_with(analyses={"w": {"name": "wandaa"}}), "did you mean 'wanda'?"),
        (_with(analyses_at={"wanda": [0.25]}), "analyses_at.wanda = [0.25]: choose fractions"),
        (_with(analyses_at={"lost": [1.0]}), "analyses_at names 'lost', which is not in analyses"),
        (_with(runs={"a b": {}}), "run name 'a b' is not a folder name"),
        (_with(report={"group_by": "size"}), "report.group_by names tag 'size', which no run has"),
    ],
)
def test_study_yaml_errors_name_the_field_and_the_fix(tmp_path, study, message):
    from layerwise.studies import load_study

    with pytest.raises(ConfigError) as err:
        load_study(str(write_study(tmp_path / "s.yaml", study)))
    assert message in str(err.value)


def test_unknown_study_name_suggests_the_builtin(capsys):
    from layerwise.studies import list_studies, resolve_study

    assert "dlm-vs-ar" in list_studies()
    with pytest.raises(MissingPathError, match="did you mean 'dlm-vs-ar'"):
        resolve_study("dlm-vs-arr")
    assert study_cli("dlm-vs-arr") == 2
    assert "layerwise: error: study 'dlm-vs-arr'" in capsys.readouterr().err


def test_builtin_dlm_vs_ar_is_the_spec_design():
    """Spec B.7: twins differing only in the objective, LRs {1e-3, 3e-3} x 3 seeds, checkpoints
    kept at 0.25 / 0.5 / 1.0 of ~4M tokens, the 0.5M-token overtraining arm (8 epochs)."""
    from layerwise.studies import load_study, plan_jobs

    study = load_study("dlm-vs-ar")
    jobs = {job.name: job for job in plan_jobs(study, "/tmp/unused")}
    assert len(jobs) == 18
    ar, dlm = jobs["ar-lr1e-3-s1"].config, jobs["dlm-lr1e-3-s1"].config
    a, d = ar.to_dict(), dlm.to_dict()
    assert a.pop("objective") == {"name": "ntp"} and d.pop("objective") == {"name": "mdm"}
    a["train"].pop("out_dir"), d["train"].pop("out_dir")
    assert a == d  # the same model, data, order, seed and schedule
    tokens = ar.train.steps * ar.train.batch_size * ar.train.block_size
    assert 3.9e6 < tokens <= 4.0e6
    assert jobs["ar-lr1e-3-s0"].checkpoint_steps == [244, 488, 976]
    assert ar.train.save_every == 244 and ar.train.keep_last is None
    ot = jobs["dlm-ot-s2"].config
    assert ot.data.max_train_tokens == 500_000
    assert round(tokens / ot.data.max_train_tokens) == 8  # epochs over the unique tokens


# --- running a study -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parallel_study(tmp_path_factory):
    """The tiny study run with 2 processes at once."""
    root = tmp_path_factory.mktemp("study-parallel")
    path = write_study(root / "tiny.yaml")
    out = root / "out"
    assert study_cli(path, "--out", out, "--jobs", 2) == 0
    return path, out


@pytest.fixture(scope="module")
def sequential_study(parallel_study, tmp_path_factory):
    """The same study run one process at a time, its `ar` run first interrupted after step 3
    (the worker's --stop-at, as a pre-empted job) and resumed by the study."""
    from layerwise.studies import load_study, plan_jobs
    from layerwise.studies.runner import JOB, _worker_env, _write_json

    path, _ = parallel_study
    out = tmp_path_factory.mktemp("study-sequential") / "out"
    study = load_study(str(path))
    job = plan_jobs(study, out)[0]
    assert job.name == "ar-s0"
    job.folder.mkdir(parents=True)
    _write_json(job.folder / JOB, job.spec(study))
    worker = [sys.executable, "-m", "layerwise.studies.worker", str(job.folder), "--stop-at", "3"]
    subprocess.run(worker, check=True, env=_worker_env(), capture_output=True)
    assert not (job.folder / "trained.json").exists()
    assert sorted(p.name for p in (job.folder / "checkpoints").glob("step_*")) == ["step_3"]
    assert study_cli(path, "--out", out, "--jobs", 1) == 0
    return out


def test_study_trains_every_run_and_aggregates(parallel_study):
    _, out = parallel_study
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"ar", "dlm"}
    for name in ("ar", "dlm"):
        run = out / "runs" / f"{name}-s0"
        # checkpoints at the fractions 0.5 and 1.0 of 6 steps, and nothing else
        assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_3", "step_6"]
        entry = results["runs"][name]["seeds"]["0"]
        assert entry["status"] == "trained"
        assert [s for s, _ in entry["train_curve"]] == [1, 2, 3, 4, 5, 6]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        grad_norms = [[r["step"], r["grad_norm"]] for r in records if r["split"] == "train"]
        assert entry["curves"] == {"grad_norm": grad_norms}
        assert set(entry["analyses"]["loss"]) == {"0.5", "1"}
        assert set(entry["analyses"]["wanda"]) == {"1"}
        assert sorted(p.name for p in (run / "analyses" / "wanda").iterdir()) == ["step_6.json"]
    # the AR loss stage at the last checkpoint is the run's own final validation (same 8 blocks,
    # same weights): checkpoint loading and the stage's cross-entropy agree with the pipeline
    ar = results["runs"]["ar"]["seeds"]["0"]
    loss = ar["analyses"]["loss"]["1"]["summary"]["loss"]
    assert loss == pytest.approx(ar["final"]["validation_loss"], rel=1e-5)
    # Wanda's arms: earlier-is-sparser with eps 0.1 over 4 blocks (spec B.5, by hand)
    wanda = ar["analyses"]["wanda"]["1"]
    assert wanda["details"]["eis_0.1"]["layer_sparsity"] == pytest.approx(
        [0.6, 0.5 + 0.1 / 3, 0.5 - 0.1 / 3, 0.4]
    )
    assert wanda["summary"]["loss"] == loss
    summary = wanda["summary"]
    assert summary["eis_minus_dis_0.1"] == pytest.approx(
        summary["eis_0.1/rel_increase"] - summary["dis_0.1/rel_increase"]
    )
    rel = wanda["summary"]["uniform/rel_increase"]
    after = wanda["details"]["uniform"]["loss"]["loss"]
    assert rel == pytest.approx((after - loss) / loss)
    dlm = results["runs"]["dlm"]["seeds"]["0"]["analyses"]["loss"]["1"]["summary"]
    assert dlm["loss"] == pytest.approx((dlm["elbo_t0.3"] + dlm["elbo_t0.8"]) / 2)
    report = (out / "report.md").read_text()
    assert "| dis_0.1/rel_increase |" in report and "dlm < ar (pairs)" in report
    assert (out / "wanda.png").is_file() and (out / "training.png").is_file()
    assert "![grad_norm](curve_grad_norm.png)" in report
    dlm_lower = results["runs"]["dlm"]["seeds"]["0"]["analyses"]["wanda"]["1"]["summary"]
    holds = dlm_lower["uniform/rel_increase"] < wanda["summary"]["uniform/rel_increase"]
    verdict = f"| 1/1 | {'holds' if holds else 'does not hold'} |" if holds else "| 0/1 |"
    assert f"| DLM hurt less by Wanda | `wanda/uniform/rel_increase` | - {verdict}" in report


def test_second_invocation_skips_finished_runs(parallel_study, capsys):
    path, out = parallel_study
    before = snapshot(out / "runs")
    assert study_cli(path, "--out", out, "--jobs", 2) == 0
    assert "2 runs, 2 done, 0 to run" in capsys.readouterr().out
    assert snapshot(out / "runs") == before  # no checkpoint, analysis or log written


def test_report_rebuilds_from_results_without_training(parallel_study):
    path, out = parallel_study
    report = (out / "report.md").read_text()
    runs = snapshot(out / "runs")
    (out / "report.md").unlink()
    (out / "wanda.png").unlink()
    assert study_cli(path, "--out", out, "--report") == 0
    assert (out / "report.md").read_text() == report
    assert (out / "wanda.png").is_file()
    assert snapshot(out / "runs") == runs


def test_snapshot_writes_what_is_finished_elsewhere_without_training(
    parallel_study, tmp_path, capsys
):
    path, out = parallel_study
    runs = snapshot(out / "runs")
    to = tmp_path / "snap"
    assert study_cli(path, "--out", out, "--snapshot", to) == 0
    assert without_timing(json.loads((to / "results.json").read_text())) == without_timing(
        json.loads((out / "results.json").read_text())
    )
    assert (to / "report.md").read_text() == (out / "report.md").read_text()
    assert snapshot(out / "runs") == runs  # nothing trained or written in the study
    # a run not finished yet: listed as not trained, the rest still reported
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "runs" / "dlm-s0" / "trained.json").unlink()
    assert study_cli(path, "--out", partial, "--snapshot", tmp_path / "snap2") == 0
    results = json.loads((tmp_path / "snap2" / "results.json").read_text())
    assert results["runs"]["ar"]["seeds"]["0"]["status"] == "trained"
    assert results["runs"]["dlm"]["seeds"]["0"]["status"] != "trained"
    assert study_cli(path, "--out", out, "--snapshot", out) == 2  # refused: the study's folder
    assert "another folder" in capsys.readouterr().err


def test_changed_config_of_a_finished_run_is_refused(parallel_study, capsys):
    path, out = parallel_study
    runs = snapshot(out / "runs")
    assert study_cli(path, "--out", out, "base.optimizer.lr=0.01") == 2
    err = capsys.readouterr().err
    assert "run ar-s0" in err and "optimizer.lr: 0.003 -> 0.01" in err
    assert "delete that run folder" in err
    assert snapshot(out / "runs") == runs


def test_interrupted_run_resumes_to_the_same_weights(parallel_study, sequential_study):
    _, parallel = parallel_study
    history = (sequential_study / "runs" / "ar-s0" / "history.jsonl").read_text().splitlines()
    events = [(r["event"], r["step"]) for r in map(json.loads, history)]
    assert events == [("start", 0), ("resume", 3)]
    resumed = final_weights(sequential_study / "runs" / "ar-s0")
    straight = final_weights(parallel / "runs" / "ar-s0")
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_parallel_jobs_give_the_sequential_results(parallel_study, sequential_study):
    _, parallel = parallel_study
    a = json.loads((parallel / "results.json").read_text())
    b = json.loads((sequential_study / "results.json").read_text())
    assert without_timing(a) == without_timing(b)
    for name, tensor in final_weights(parallel / "runs" / "dlm-s0").items():
        assert torch.equal(final_weights(sequential_study / "runs" / "dlm-s0")[name], tensor)


def test_collapse_and_quantize_stages_on_a_trained_run(parallel_study, tmp_path):
    """The stages the tiny study leaves out, run in this process on a copy of the trained DLM
    (probed on masked copies): depth_probe's layer-collapse metrics and sparse_ft's RTN, against
    the loss stage's baseline."""
    from layerwise.studies.runner import JOB
    from layerwise.studies.worker import analyse

    _, out = parallel_study
    for name in ("dlm",):
        run = tmp_path / name
        shutil.copytree(out / "runs" / f"{name}-s0", run)
        job = json.loads((run / JOB).read_text())
        job["analyses"] = {
            "collapse": {"name": "collapse", "alpha_block": 16},
            "quantize": {"name": "quantize", "methods": ["rtn"], "bits": [8, 2], "group_size": 32},
        }
        job["checkpoints"] = {"1": 6}
        job["analyses_at"] = {"collapse": [1.0], "quantize": [1.0]}
        assert analyse(run, job) == []
        base = json.loads((run / "analyses" / "loss" / "step_6.json").read_text())["summary"]
        collapse = json.loads((run / "analyses" / "collapse" / "step_6.json").read_text())
        quant = json.loads((run / "analyses" / "quantize" / "step_6.json").read_text())
        assert collapse["summary"]["loss"] == base["loss"] == quant["summary"]["loss"]
        # 4 blocks: block outputs h_1..h_3 give 3 x 3 similarities and 2 neighbour pairs
        assert len(collapse["details"]["redundancy"]) == 2
        assert len(collapse["details"]["skip_rel_increase"]) == 4
        assert len(collapse["details"]["similarity"]["matrices"]["per_token"]) == 3
        assert len(collapse["details"]["alpha_per_layer"]) == 4
        # 8-bit RTN barely moves the loss; 2-bit moves it far more
        rtn8 = abs(quant["summary"]["rtn_8bit/rel_increase"])
        rtn2 = abs(quant["summary"]["rtn_2bit/rel_increase"])
        assert rtn8 < 1e-3 and rtn2 > 10 * rtn8


def test_interrupted_run_started_with_another_config_is_refused(tmp_path):
    """A run folder holding the start of a run (config.yaml, no trained.json) that the study's
    config would not resume: refused before anything runs, naming the field."""
    from layerwise.studies import StudyMismatchError, load_study, plan_jobs, run_study

    study = load_study(str(write_study(tmp_path / "tiny.yaml")))
    out = tmp_path / "out"
    job = plan_jobs(study, out)[0]
    job.folder.mkdir(parents=True)
    job.config.with_overrides(["optimizer.lr=0.01"]).to_yaml(job.folder / "config.yaml")
    with pytest.raises(StudyMismatchError, match=r"optimizer.lr: 0.01 -> 0.003.*cannot resume"):
        run_study(study, out, echo=lambda line: None)
    assert sorted(p.name for p in job.folder.iterdir()) == ["config.yaml"]
    assert not (out / "runs" / "dlm-s0").exists()


def test_max_train_tokens_keeps_the_first_tokens_of_the_train_split(small_data):
    """data.max_train_tokens=N: the train blocks are those of the first N tokens (N + 1 with the
    shared boundary token), the validation split unchanged; epochs then repeat them."""
    from layerwise.data import DataConfig, prepare_data

    capped = prepare_data(
        DataConfig(vocab_size=SMALL_VOCAB, max_documents=SMALL_DOCS, max_train_tokens=1000), 64
    )
    assert len(capped.train) == 1000 // 64
    assert torch.equal(capped.train.stream, small_data.train.stream[:1001])
    assert torch.equal(capped.validation.stream, small_data.validation.stream)
    batches = capped.training_batches(seed=0, global_batch=5)
    seen = torch.cat([batches.next_global_batch(5) for _ in range(6)])  # 2 epochs of 3 batches
    assert len({tuple(row.tolist()) for row in seen}) == 15  # only the 15 capped blocks


def _claim_results(values: dict[tuple[str, str, int, str], float]) -> dict:
    """A results dict by hand: {(family, lr, seed, fraction): value of stage q's metric m}."""
    runs: dict = {}
    for (family, lr, seed, fraction), value in values.items():
        run = runs.setdefault(f"{family}-{lr}", {"tags": {"family": family, "lr": lr}, "seeds": {}})
        entry = run["seeds"].setdefault(str(seed), {"analyses": {"q": {}}})
        entry["analyses"]["q"][fraction] = {"summary": {"m": value}}
    claims = [
        {"text": "dlm lower", "metric": "q/m", "expect": "lower", "group": "dlm"},
        {"text": "dlm negative", "metric": "q/m", "expect": "negative", "where": {"family": "dlm"}},
        {"text": "nothing", "metric": "q/absent", "expect": "positive"},
    ]
    report = {"pair": {"tag": "family", "a": "dlm", "b": "ar"}, "claims": claims}
    return {"config": {"checkpoints": [0.5, 1.0], "report": report}, "runs": runs}


def test_claims_count_pairs_and_signs_by_checkpoint():
    """Spec B.7's rule: a direction holds iff it holds in >= 5 of 6 (LR, seed) pairs at >= 2
    checkpoints. DLM values: at 0.5 below AR's in 5 of 6 pairs and negative in 3 of 6, at 1.0
    below in all and negative in all."""
    from layerwise.studies.claims import ClaimConfig, claim_counts, claims_section

    values = {}
    for lr in ("1e-3", "3e-3"):
        for seed in range(3):
            values["ar", lr, seed, "0.5"] = 1.0
            values["ar", lr, seed, "1"] = 1.0
            first = lr == "1e-3" and seed == 0  # the one pair / sign that fails at 0.5
            values["dlm", lr, seed, "0.5"] = 2.0 if first else (0.5 if seed == 1 else -0.5)
            values["dlm", lr, seed, "1"] = -1.0
    results = _claim_results(values)
    lower, negative, absent = (
        ClaimConfig.model_validate(c) for c in results["config"]["report"]["claims"]
    )
    assert claim_counts(results, lower, "0.5") == (5, 6)
    assert claim_counts(results, lower, "1") == (6, 6)
    assert claim_counts(results, negative, "0.5") == (3, 6)  # seeds 1 are +0.5, the first +2
    assert claim_counts(results, negative, "1") == (6, 6)
    assert claim_counts(results, absent, "1") == (0, 0)
    table = "\n".join(claims_section(results))
    assert "| dlm lower | `q/m` | 5/6 | 6/6 | holds |" in table
    assert "| dlm negative | `q/m` | 3/6 | 6/6 | does not hold |" in table
    assert "| nothing | `q/absent` | - | - | not measurable |" in table
    for run in results["runs"].values():  # only the last checkpoint measured: cannot decide
        for entry in run["seeds"].values():
            entry["analyses"]["q"].pop("0.5", None)
    table = "\n".join(claims_section(results))
    assert "| dlm lower | `q/m` | - | 6/6 | not measurable |" in table


def test_claims_must_name_a_stage_and_the_pair(tmp_path):
    """A claim reads `<stage label>/<metric>` of the study's analyses; lower / higher need the
    report's pair and one of its values as `group`."""
    from layerwise.studies import load_study

    assert len(load_study("dlm-vs-ar").report.claims) == 6  # spec B.7's expected directions
    bad_label = _with(report={"claims": [{"text": "x", "metric": "gptq/m", "expect": "negative"}]})
    with pytest.raises(ConfigError, match="metric 'gptq/m' must read <stage label>"):
        load_study(str(write_study(tmp_path / "a.yaml", bad_label)))
    no_pair = _with(
        report={"claims": [{"text": "x", "metric": "wanda/m", "expect": "lower", "group": "dlm"}]}
    )
    with pytest.raises(ConfigError, match="compares the pairs of report.pair"):
        load_study(str(write_study(tmp_path / "b.yaml", no_pair)))


def test_builtin_neurotrails_is_the_spec_design():
    # spec neurotrails.md §9: arms (a)-(h) on the same base; parameter counts by hand with
    # V 2048, d 128, f 352, L 6: one block P = 4 d^2 + 3 d f + 2 d = 200,960; one model
    # 2 V d + L P + d = 1,730,176; TreeNet (2 shared, 3 heads of 4) V d + 2 P + 3 (4 P + d + V d)
    from layerwise.models import build_model
    from layerwise.studies import load_study

    study = load_study("neurotrails")
    assert set(study.runs) == {
        "single", "wide", "ensemble", "treenet", "nt09", "nt045", "static045",
        "b1", "b2", "b5", "nt09-long", "nt045-long",
    }  # fmt: skip
    V, d, f, L = 2048, 128, 352, 6
    P = 4 * d * d + 3 * d * f + 2 * d
    single = 2 * V * d + L * P + d
    treenet = V * d + 2 * P + 3 * (4 * P + d + V * d)
    expected = {"single": single, "ensemble": 3 * single, "treenet": treenet}
    for run, count in expected.items():
        cfg = study.pretrain_config(run, 0)
        model = build_model(cfg.model, V, cfg.train.block_size, device="meta")
        assert sum(p.numel() for p in model.parameters()) == count, run
    dense = {"single", "wide", "ensemble", "treenet"}
    for run in study.runs:
        cfg = study.pretrain_config(run, 0)
        assert cfg.sparsity.density == (
            1.0 if run in dense else 0.45 if "45" in run or run[0] == "b" else 0.9
        )
    assert study.pretrain_config("static045", 0).sparsity.update_every is None
    assert study.pretrain_config("b1", 0).model.heads.blocks_in_head == 1
    # the official 1/d-longer runs: steps and warm-up scaled by 1/d
    base = study.pretrain_config("nt09", 0).train.steps
    assert study.pretrain_config("nt09-long", 0).train.steps == round(base / 0.9)
    assert study.pretrain_config("nt045-long", 0).train.steps == round(base / 0.45)
