"""sdecor.experiments.grid: a two-cell, one-epoch grid end to end, resuming, summaries."""

import json

import pytest

from sdecor.experiments.grid import (
    ALL_METHODS,
    CANDIDATES,
    GRID_METHODS,
    SWEEP_DEFAULTS,
    GridConfig,
    _resolve_options,
    grid_figure,
    grid_runs,
    grid_summary,
    grid_table,
    pending_runs,
    run_grid,
    run_key,
)
from sdecor.experiments.runner import EvalConfig
from sdecor.losses import build_objective


def _config(epochs=1):
    return GridConfig(
        epochs=epochs,
        small_cnn_width=8,
        n_train=64,
        n_test=32,
        n_train_eval=32,
        eval=EvalConfig(n_eval=16, n_deletion=8, deletion_steps=4, batch_size=32),
    )


def test_two_cell_grid_end_to_end_and_resume(tmp_path):
    path = str(tmp_path / "grid.json")
    kwargs = dict(
        families=("digits-in-clutter", "shapes-in-texture"),
        models=("small_cnn",),
        regimes=("adam",),
        methods=("standard", "saliencydecor"),
        seeds=(0,),
        progress=False,
        log=None,
    )
    state = run_grid(path, config=_config(), **kwargs)
    keys = [r["key"] for r in state["runs"]]
    assert keys == [
        run_key("digits-in-clutter", "small_cnn", "adam", "standard", 0),
        run_key("digits-in-clutter", "small_cnn", "adam", "saliencydecor", 0),
        run_key("shapes-in-texture", "small_cnn", "adam", "standard", 0),
        run_key("shapes-in-texture", "small_cnn", "adam", "saliencydecor", 0),
    ]
    with open(path) as f:
        on_disk = json.load(f)
    assert [r["key"] for r in on_disk["runs"]] == keys
    for r in on_disk["runs"]:
        m = r["metrics"]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["train_accuracy"] <= 1.0
        assert m["relevance_mass_accuracy"] is not None and len(r["history"]) == 1
        assert r["regime_settings"]["optimizer"] == "adam" and r["regime_settings"]["batch_size"] == 128
        assert r["device"] == "cpu" and r["memory_format"] == "contiguous"
    # every option the objective ran with, as sdecor compare records it
    defaults_run = on_disk["runs"][1]
    assert defaults_run["resolved_options"] == build_objective("saliencydecor", **SWEEP_DEFAULTS).options()
    assert on_disk["runs"][0]["resolved_options"] == {"label_smoothing": 0.0}
    # a rerun skips what is done
    again = run_grid(path, config=_config(), **kwargs)
    assert [r["key"] for r in again["runs"]] == keys
    # runs made with another config are refused
    with pytest.raises(ValueError, match="another grid config"):
        run_grid(path, config=_config(epochs=2), **kwargs)
    summary = grid_summary(on_disk["runs"])
    assert set(summary) == {"digits-in-clutter|small_cnn|adam", "shapes-in-texture|small_cnn|adam"}
    cell = summary["digits-in-clutter|small_cnn|adam"]
    delta = cell["saliencydecor"]["delta_accuracy"]["mean"]
    assert delta == pytest.approx(cell["saliencydecor"]["accuracy"]["mean"] - cell["standard"]["accuracy"]["mean"])
    assert cell["standard"]["delta_accuracy"]["mean"] == 0.0
    table = grid_table(summary)
    assert table.count("\n") == 1 + 4 and "saliencydecor" in table
    png = grid_figure(summary, str(tmp_path / "grid.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_grid_order_and_validation(tmp_path):
    runs = list(grid_runs(("a", "b"), ("m",), ("sgd",), ("x", "y"), (0, 1)))
    assert runs[:3] == [("a", "m", "sgd", "x", 0), ("a", "m", "sgd", "y", 0), ("a", "m", "sgd", "x", 1)]
    assert len(runs) == 8
    with pytest.raises(ValueError, match="unknown family"):
        run_grid(str(tmp_path / "g.json"), families=("nope",), progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        run_grid(str(tmp_path / "g.json"), methods=("nope",), progress=False)


def test_pending_runs_leave_out_the_done_keys_in_grid_order():
    done = [run_key("a", "m", "sgd", "x", 0), run_key("b", "m", "sgd", "y", 1), "not-a-key"]
    todo = pending_runs(done, ("a", "b"), ("m",), ("sgd",), ("x", "y"), (0, 1))
    everything = list(grid_runs(("a", "b"), ("m",), ("sgd",), ("x", "y"), (0, 1)))
    assert todo == [spec for spec in everything if spec not in (("a", "m", "sgd", "x", 0), ("b", "m", "sgd", "y", 1))]
    assert len(todo) == 6
    assert pending_runs([], ("a",), ("m",), ("sgd",), ("x",), (0,)) == [("a", "m", "sgd", "x", 0)]


def test_grid_module_refuses_a_bad_device(capsys):
    from sdecor.experiments.grid import main

    with pytest.raises(SystemExit):
        main(["--out", "unused.json", "--device", "gpu0"])
    assert "--device: expected a torch device" in capsys.readouterr().err


def test_ramp_fraction_resolves_to_steps():
    assert _resolve_options({"ramp": 0.25, "lambda_decor": 0.0}, 200) == {
        "lambda_decor": 0.0,
        "consistency_ramp_steps": 50,
    }
    assert _resolve_options({}, 10) == {}


@pytest.mark.parametrize("name", sorted(ALL_METHODS))
def test_every_grid_method_builds_its_objective_with_the_options_it_names(name):
    objective_name, options = ALL_METHODS[name]
    resolved = _resolve_options(options, total_steps=100)
    objective = build_objective(objective_name, **resolved)
    for option, value in resolved.items():
        assert getattr(objective, option) == value, (name, option)


def test_saliency_decor_settings_state_every_default_so_they_outlive_a_change_of_the_defaults():
    from sdecor.losses.saliency_decor import DEFAULTS

    assert set(SWEEP_DEFAULTS) == set(DEFAULTS)
    assert SWEEP_DEFAULTS == {
        "lambda_consistency": 3.0,
        "lambda_decor": 0.1,
        "mask_fraction": 0.5,
        "saliency_abs": True,
        "fill": "uniform",
        "decor_mode": "correlation",
        "masked_bn": "train",
        "feature_layer": None,
    }
    settings = {name: options for name, (objective, options) in ALL_METHODS.items() if objective == "saliencydecor"}
    assert {"saliencydecor", "sd_ld0", "sd_ld1", "sd_ld1_conv", "sd_conv_bn_frozen"} <= set(settings)
    for name, options in settings.items():
        assert set(SWEEP_DEFAULTS) <= set(options), name
    assert settings["saliencydecor"] == SWEEP_DEFAULTS
    assert settings["sd_ld1_conv"] == {**SWEEP_DEFAULTS, "lambda_decor": 1.0, "feature_layer": "conv"}
    assert settings["sd_conv_bn_frozen"] == {**settings["sd_ld1_conv"], "masked_bn": "frozen"}


def test_the_library_defaults_method_is_saliency_decor_with_its_defaults():
    from sdecor.experiments.grid import LIBRARY_DEFAULTS_METHOD
    from sdecor.losses.saliency_decor import DEFAULTS

    assert GRID_METHODS[LIBRARY_DEFAULTS_METHOD] == ("saliencydecor", DEFAULTS)


def test_all_methods_is_the_grid_methods_and_the_candidates_with_no_name_shared():
    assert not set(GRID_METHODS) & set(CANDIDATES)
    assert ALL_METHODS == {**GRID_METHODS, **CANDIDATES}


def _record(cell, method, seed, acc, rma=None):
    """A grid record of cell ``cell|m|r`` with these scores (the fields the summaries read)."""
    metrics = {"accuracy": acc} if rma is None else {"accuracy": acc, "relevance_mass_accuracy": rma}
    return {"family": cell, "model": "m", "regime": "r", "method": method, "seed": seed, "metrics": metrics}


def test_paired_deltas_use_shared_seeds():
    def rec(method, seed, acc):
        return _record("f", method, seed, acc, acc / 2)

    records = [rec("standard", 0, 0.9), rec("standard", 1, 0.8), rec("sd", 0, 0.85), rec("sd", 1, 0.79)]
    row = grid_summary(records)["f|m|r"]["sd"]
    assert row["delta_accuracy"]["mean"] == pytest.approx((-0.05 - 0.01) / 2)
    assert row["delta_accuracy"]["std"] == pytest.approx(((0.02**2 + 0.02**2) / 1) ** 0.5)
    assert row["accuracy"]["n"] == 2
    table = grid_table(grid_summary(records), metrics=("accuracy",), methods=("sd", "absent"))
    assert table.splitlines()[2].startswith("| f / m / r | sd | 2 | 0.820 ± 0.042 | -0.030 ± 0.028 |")
    assert len(table.splitlines()) == 3


def test_compare_grid_command(tmp_path, capsys):
    from sdecor.cli import main

    path = str(tmp_path / "g.json")
    argv = ["compare", "--grid", path, "--grid-families", "digits-shortcut", "--grid-models", "small_cnn"]
    argv += ["--grid-regimes", "sgd", "--grid-methods", "standard", "--seeds", "1", "--grid-epochs", "1"]
    argv += ["--n-train", "64", "--n-test", "32", "--threads", "1", "--quiet", "--grid-channels-last"]
    assert main(argv) == 0
    with open(path) as f:
        runs = json.load(f)["runs"]
    assert [r["key"] for r in runs] == ["digits-shortcut|small_cnn|sgd|standard|0"]
    assert runs[0]["memory_format"] == "channels_last"
    report = (tmp_path / "g.md").read_text()
    assert report.count("| digits-shortcut / small_cnn / sgd | standard | 1 |") == 1  # the run's row
    assert report.count("| digits-shortcut / small_cnn / sgd |") == 3  # and the two per-cell change tables
    assert "1 runs of 1" in capsys.readouterr().out
    assert (tmp_path / "g.png").exists()
    report_only = ["compare", "--grid", path, "--grid-report", "--quiet"]
    with pytest.raises(SystemExit):
        main(report_only + ["--grid-baseline", "ce"])
    assert "--grid-baseline: baseline 'ce' has no runs" in capsys.readouterr().err
    # the default arguments describe the whole grid, which holds this run: "of N" with N the grid's size
    assert main(report_only + ["--grid-baseline", "standard"]) == 0
    assert f"1 runs of {len(list(grid_runs()))}" in capsys.readouterr().out
    # a file with a run outside the grid the arguments describe: no "of N"
    assert main(report_only + ["--grid-models", "resnet20"]) == 0
    assert "(1 runs; config" in capsys.readouterr().out


def test_compare_grid_command_checks_the_device(tmp_path, capsys):
    from sdecor.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--grid", str(tmp_path / "g.json"), "--device", "tpu"])
    assert "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


def test_report_names_the_cells_with_runs_off_the_cpu(tmp_path):
    from sdecor.experiments.grid import device_counts, write_report

    records = [_record("f", "standard", 0, 0.9, 0.3), _record("f", "sd", 0, 0.8, 0.4), _record("g", "standard", 0, 0.5)]
    records[1]["device"] = "cuda"
    assert device_counts(records) == {"f|m|r": {"cpu": 1, "cuda": 1}, "g|m|r": {"cpu": 1}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"config": {}, "runs": records}))
    write_report(str(path))
    assert "Cells with runs not on the CPU: f / m / r: 1 on cpu, 1 on cuda.\n" in (tmp_path / "g.md").read_text()
    del records[1]["device"]
    path.write_text(json.dumps({"config": {}, "runs": records}))
    write_report(str(path))
    assert "not on the CPU" not in (tmp_path / "g.md").read_text()


def test_report_pairs_against_the_baseline_it_is_given(tmp_path, capsys):
    from sdecor.experiments.grid import main, write_report

    records = [_record("f", "standard", 0, 0.9, 0.3), _record("f", "sd", 0, 0.8, 0.4), _record("f", "sd3", 0, 0.7, 0.5)]
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"config": {}, "runs": records}))
    summary = write_report(str(path), baseline="sd")
    assert summary["f|m|r"]["sd3"]["delta_accuracy"]["mean"] == pytest.approx(-0.1)
    assert summary["f|m|r"]["standard"]["delta_relevance_mass_accuracy"]["mean"] == pytest.approx(-0.1)
    text = (tmp_path / "g.md").read_text()
    assert "Per cell, `sd`'s accuracy and each method's paired change against it:" in text
    assert "| f / m / r | 0.800 | +0.100 | -0.100 |" in text  # sd's accuracy, then standard's and sd3's changes
    with pytest.raises(ValueError, match="baseline 'ce' has no runs in .*'sd', 'sd3', 'standard'"):
        write_report(str(path), baseline="ce")
    for r in records:
        r["key"] = f"{r['family']}|m|r|{r['method']}|0"
    path.write_text(json.dumps({"config": {}, "runs": records}))
    with pytest.raises(SystemExit):
        main(["--out", str(path), "--report", "--baseline", "ce"])
    assert "--baseline: baseline 'ce' has no runs" in capsys.readouterr().err
    assert main(["--out", str(path), "--report", "--baseline", "sd"]) == 0
    # runs outside the grid the arguments describe: the report counts the file's runs, not "of 288"
    assert "from `g.json` (3 runs; config" in (tmp_path / "g.md").read_text()


def test_merge_records(tmp_path):
    from sdecor.experiments.grid import load_records, merge_records

    def write(name, keys, config):
        path = str(tmp_path / name)
        with open(path, "w") as f:
            json.dump({"config": config, "runs": [{"key": k} for k in keys]}, f)
        return path

    a = write("a.json", ["x", "y"], {"epochs": 1})
    b = write("b.json", ["y", "z"], {"epochs": 1})
    merged = merge_records([b], a)
    assert [r["key"] for r in merged["runs"]] == ["x", "y", "z"]
    assert load_records(a) == merged
    c = write("c.json", ["w"], {"epochs": 2})
    with pytest.raises(ValueError, match="another grid config"):
        merge_records([c], a)


def test_method_ranking_takes_the_worst_cell_and_counts_the_guard():
    from sdecor.experiments.grid import method_ranking, ranking_table

    rec = _record
    records = []
    for seed, noise in ((0, 0.0), (1, 0.002)):
        records += [rec("a", "standard", seed, 0.90, 0.30), rec("b", "standard", seed, 0.80, 0.20)]
        records += [rec("a", "x", seed, 0.90 - 0.001 + noise, 0.35), rec("b", "x", seed, 0.80 - 0.02, 0.20 - noise)]
        records += [rec("a", "y", seed, 0.90 + 0.01, 0.30 + noise), rec("b", "y", seed, 0.80 - 0.004, 0.25)]
    ranking = method_ranking(grid_summary(records))
    assert list(ranking) == ["y", "x"]  # best worst case first
    x, y = ranking["x"], ranking["y"]
    assert x["cells"] == 2 and x["worst_cell"] == "b|m|r" and x["worst_delta_accuracy"] == pytest.approx(-0.02)
    assert x["within_guard"] == 1 and x["rma_up"] == 1 and x["rma_up_clearly"] == 1
    assert y["worst_delta_accuracy"] == pytest.approx(-0.004) and y["within_guard"] == 2
    # y's RMA rises in both cells, but in cell a only by 0.001 ± 0.0014 (not by more than a std)
    assert y["rma_up"] == 2 and y["rma_up_clearly"] == 1
    assert y["mean_delta_rma"] == pytest.approx((0.001 + 0.05) / 2)
    table = ranking_table(ranking)
    assert table.splitlines()[2].startswith("| y | 2 | -0.004 (b / m / r) | 2 | 2 (1) | +0.025 |")


def test_scores_table_pairs_every_score_and_counts_the_cells_that_get_better():
    from sdecor.experiments.grid import scores_table

    def rec(cell, method, seed, acc, rma, deletion):
        r = _record(cell, method, seed, acc, rma)
        r["metrics"]["deletion_auc"] = deletion
        return r

    records = [
        rec("a", "standard", 0, 0.90, 0.30, 0.20),
        rec("a", "standard", 1, 0.80, 0.30, 0.20),
        rec("a", "sd", 0, 0.91, 0.40, 0.10),  # accuracy +0.01 / -0.02: down on average
        rec("a", "sd", 1, 0.78, 0.38, 0.18),
        rec("b", "standard", 0, 0.50, 0.20, 0.10),
        rec("b", "sd", 0, 0.40, 0.10, 0.15),  # one seed: worse in all three
        rec("c", "sd", 0, 0.99, 0.99, 0.01),  # no cross-entropy run: no row
    ]
    table = scores_table(
        grid_summary(records), "sd", metrics=("accuracy", "train_accuracy", "relevance_mass_accuracy", "deletion_auc")
    )
    lines = table.splitlines()
    assert lines[0] == "| cell | n | Δ accuracy ↑ | Δ train_accuracy | Δ relevance_mass_accuracy ↑ | Δ deletion_auc ↓ |"
    assert lines[2] == "| a / m / r | 2 | -0.005 ± 0.021 | n/a | +0.090 ± 0.014 | -0.060 ± 0.057 |"
    assert lines[3] == "| b / m / r | 1 | -0.100 | n/a | -0.100 | +0.050 |"
    # accuracy better nowhere; RMA and deletion better in cell a, by more than their std there
    assert lines[4] == "| better in | | 0 of 2 (0) |  | 1 of 2 (1) | 1 of 2 (1) |"
    assert len(lines) == 5
    with pytest.raises(ValueError, match="no cell has paired runs of method 'x'"):
        scores_table(grid_summary(records), "x")


def test_report_shows_the_library_defaults_in_every_score_unless_they_are_the_baseline(tmp_path):
    from sdecor.experiments.grid import LIBRARY_DEFAULTS_METHOD, write_report

    records = [_record("f", "standard", 0, 0.9, 0.3), _record("f", LIBRARY_DEFAULTS_METHOD, 0, 0.8, 0.4)]
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"config": {}, "runs": records}))
    write_report(str(path))
    text = (tmp_path / "g.md").read_text()
    assert f"The library defaults (`{LIBRARY_DEFAULTS_METHOD}`) in every score" in text
    assert "| f / m / r | 1 | -0.100 | n/a | n/a | n/a | +0.100 | n/a | n/a |" in text
    write_report(str(path), baseline=LIBRARY_DEFAULTS_METHOD)
    assert "in every score" not in (tmp_path / "g.md").read_text()
    # the defaults only in a cell without the baseline: nothing to pair, no section (and no error)
    records = [_record("f", "standard", 0, 0.9, 0.3), _record("g", LIBRARY_DEFAULTS_METHOD, 0, 0.8, 0.4)]
    path.write_text(json.dumps({"config": {}, "runs": records}))
    write_report(str(path))
    assert "in every score" not in (tmp_path / "g.md").read_text()


def test_delta_table_has_a_row_per_cell_and_a_column_per_method():
    from sdecor.experiments.grid import delta_table

    rec = _record
    records = [
        rec("a", "standard", 0, 0.9),
        rec("a", "standard", 1, 0.8),
        rec("a", "x", 0, 0.95),
        rec("a", "x", 1, 0.8),
    ]
    records += [rec("b", "standard", 0, 0.5), rec("b", "y", 0, 0.25)]
    lines = delta_table(grid_summary(records), "accuracy").splitlines()
    assert lines[0] == "| cell | standard accuracy | x Δ | y Δ |"
    assert lines[2] == "| a / m / r | 0.850 ± 0.071 | +0.025 ± 0.035 | n/a |"
    assert lines[3] == "| b / m / r | 0.500 | n/a | -0.250 |"
    assert delta_table(grid_summary(records), "accuracy", methods=["y"]).splitlines()[0].endswith("| y Δ |")


def test_float32_math_turns_tf32_off_and_restores_it():
    import torch

    from sdecor.experiments.grid import float32_math

    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with float32_math():
            assert [f.allow_tf32 for f in flags] == [False, False]
        assert [f.allow_tf32 for f in flags] == [True, True]
        with pytest.raises(RuntimeError, match="inside"):
            with float32_math():
                raise RuntimeError("inside")
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


def test_runs_train_in_float32_on_every_device(monkeypatch):
    """No autocast (``amp=False`` whatever the device) and no TF32 while a run trains."""
    import torch

    from sdecor.experiments import grid as G
    from sdecor.experiments.runner import load_data

    seen = {}
    real_fit = G.fit

    def spy(*args, **kwargs):
        seen.update(kwargs, tf32=(torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(G, "fit", spy)
    cfg = _config()
    data = load_data("digits-in-clutter", batch_size=32, n_train=cfg.n_train, n_test=cfg.n_test)
    out = G.train_and_evaluate(data, method="standard", config=cfg, channels_last=True)
    assert seen["amp"] is False and seen["tf32"] == (False, False) and seen["channels_last"] is True
    assert 0.0 <= out["metrics"]["accuracy"] <= 1.0


def test_parse_regime_reads_every_field_and_defaults_the_optional_ones():
    from sdecor.experiments.grid import Regime, parse_regime

    assert parse_regime("adam-short=adam,2e-3,128,0,12") == ("adam-short", Regime("adam", 2e-3, 128, 0.0, 12))
    assert parse_regime(" w = adamw , 0.001 , 64 , 0.05 ") == ("w", Regime("adamw", 1e-3, 64, 0.05, 12))
    assert parse_regime("s=sgd,0.1,32") == ("s", Regime("sgd", 0.1, 32, 0.0, 12))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("adam,2e-3,128", "expected NAME=OPTIMIZER"),
        ("=adam,2e-3,128", "expected NAME=OPTIMIZER"),
        ("a|b=adam,2e-3,128", "expected NAME=OPTIMIZER"),
        ("x=adam,2e-3", "3 to 5 values"),
        ("x=adam,2e-3,128,0,12,7", "3 to 5 values"),
        ("x=rmsprop,2e-3,128", "optimizer must be one of sgd, adam, adamw"),
        ("x=adam,fast,128", "lr must be float, got 'fast'"),
        ("x=adam,0,128", "lr must be > 0"),
        ("x=adam,1e-3,12.5", "batch_size must be int, got '12.5'"),
        ("x=adam,1e-3,0", "batch_size must be an integer >= 1"),
        ("x=adam,1e-3,16,-0.1", "weight_decay must be >= 0"),
        ("x=adam,1e-3,16,0,0", "epochs must be an integer >= 1"),
    ],
)
def test_parse_regime_names_the_malformed_part(spec, message):
    from sdecor.experiments.grid import parse_regime

    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        parse_regime(spec)


def test_regimes_with_adds_to_the_built_in_ones_and_refuses_to_redefine():
    from sdecor.experiments.grid import REGIMES, Regime, regimes_with

    table = regimes_with(["short=adam,2e-3,128,0,12"])
    assert list(table) == [*REGIMES, "short"] and table["short"] == Regime("adam", 2e-3, 128, 0.0, 12)
    assert regimes_with() == REGIMES
    with pytest.raises(ValueError, match="'adam' is a built-in regime"):
        regimes_with(["adam=adam,2e-3,128"])
    with pytest.raises(ValueError, match="'short' is defined twice"):
        regimes_with(["short=adam,2e-3,128", "short=sgd,0.1,32"])


def test_check_regime_names_lists_every_unknown_name_and_the_choices():
    from sdecor.experiments.grid import check_regime_names, regimes_with

    table = regimes_with(["short=adam,2e-3,128"])
    check_regime_names(["sgd", "short"], table)  # all known: no error
    with pytest.raises(ValueError, match=r"unknown regime\(s\) \['tiny', 'long'\]; choose from sgd, adam, short"):
        check_regime_names(["sgd", "tiny", "long"], table)


def test_grid_module_runs_a_defined_regime_and_resumes_only_with_its_definition(tmp_path, capsys):
    from sdecor.experiments.grid import main

    path = str(tmp_path / "g.json")
    argv = ["--out", path, "--families", "digits-in-clutter", "--models", "small_cnn", "--methods", "standard"]
    argv += ["--seeds", "0", "--n-train", "48", "--n-test", "32", "--threads", "1", "--no-report"]
    defined = ["--define-regime", "tiny=adamw,1e-3,16,0.01,1", "--regimes", "tiny"]
    assert main(argv + defined) == 0
    with open(path) as f:
        state = json.load(f)
    (run,) = state["runs"]
    assert run["key"] == "digits-in-clutter|small_cnn|tiny|standard|0"
    assert run["regime_settings"] == {
        "optimizer": "adamw",
        "lr": 1e-3,
        "batch_size": 16,
        "weight_decay": 0.01,
        "epochs": 1,
    }
    assert len(run["history"]) == 1  # the defined regime's one epoch
    assert set(state["config"]["regimes"]) == {"sgd", "adam", "tiny"}
    # the same definitions resume (nothing left to run); without them the file is refused
    assert main(argv + defined) == 0
    with pytest.raises(ValueError, match="another grid config"):
        main(argv + ["--regimes", "sgd"])
    with pytest.raises(SystemExit):
        main(argv + ["--regimes", "tiny"])
    assert "--regimes: unknown regime(s) ['tiny']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--define-regime", "tiny=adam,1e-3"])
    assert "--define-regime: regime 'tiny': expected OPTIMIZER" in capsys.readouterr().err


def test_compare_grid_command_checks_defined_regimes(tmp_path, capsys):
    from sdecor.cli import main

    path = tmp_path / "g.json"
    with pytest.raises(SystemExit):
        main(["compare", "--grid", str(path), "--grid-define-regime", "adam=adam,1e-3,16"])
    assert "--grid-define-regime: regime 'adam' is a built-in regime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--grid", str(path), "--grid-regimes", "short"])
    assert "--grid-regimes: unknown regime(s) ['short']" in capsys.readouterr().err
    assert not path.exists()
