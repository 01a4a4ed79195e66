"""``verl-repro plot``: training curves from veRL metrics files, one line per run."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from verl_repro.analysis.training_curves import PANELS, load_runs, plot_training_curves, run_label
from verl_repro import UsageError
from verl_repro.run_metrics import figure_value, parse_metrics, read_metrics, series


def _write(path, steps):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": step, "data": data}) + "\n" for step, data in steps))
    return path


GRPO = [
    (1, {"critic/score/mean": 0.25, "critic/score/min": 0.0, "critic/score/max": 1.0, "response_length/mean": 30.0,
         "actor/entropy": 0.5, "timing_s/step": 12.0, "training/note": "text is ignored"}),
    (2, {"critic/score/mean": 0.5, "critic/score/min": 0.0, "critic/score/max": 1.0, "response_length/mean": 28.0,
         "actor/entropy": 0.45, "timing_s/step": 10.0}),
]
REPRO = [
    (1, {"critic/score/mean": 0.25, "critic/score/min": 0.0, "critic/score/max": 1.0, "repro/process_adv_abs_mean": 0.7}),
    (2, {"critic/score/mean": 0.75, "critic/score/min": 0.0, "critic/score/max": 1.0, "repro/process_adv_abs_mean": 0.6}),
]


def test_metrics_are_read_per_step_and_figures_picked_by_key(tmp_path):
    path = _write(tmp_path / "grpo" / "metrics.jsonl", GRPO)
    with path.open("a") as f:
        f.write('{"step": 3, "data": {"critic/sco')  # a run still writing its last line
    metrics = read_metrics(path)
    assert sorted(metrics) == [1, 2] and "training/note" not in metrics[1]
    assert series(metrics, "response_length") == ([1, 2], [30.0, 28.0])
    # the repro_math reward is 0/1, so the mean score is the accuracy
    assert series(metrics, "accuracy") == ([1, 2], [0.25, 0.5])
    assert series(metrics, "process_adv") == ([], [])
    # a score outside [0, 1] is not an accuracy
    assert figure_value({"critic/score/mean": 1.2, "critic/score/min": 0.0, "critic/score/max": 2.0}, "accuracy") is None
    assert figure_value({"critic/score/mean": float("nan")}, "reward") is None
    assert run_label(path) == "grpo" and run_label(tmp_path / "x.jsonl") == "x"


def test_plot_cli_draws_every_panel_for_every_run(tmp_path):
    from PIL import Image

    from verl_repro.cli import main

    grpo = _write(tmp_path / "grpo" / "metrics.jsonl", GRPO)
    repro = _write(tmp_path / "repro_grpo" / "metrics.jsonl", REPRO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plot", str(grpo), str(repro), "--output", str(tmp_path / "curves.png")]) == 0
    assert "grpo: 2 steps" in out.getvalue() and "repro_grpo: 2 steps" in out.getvalue()
    with Image.open(tmp_path / "curves.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 500


def test_each_panel_has_one_line_per_run_that_logs_it(tmp_path, monkeypatch):
    from verl_repro.analysis import figures

    saved = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: saved.setdefault("figure", figure) and path)
    runs = {"grpo": dict(GRPO), "repro_grpo": dict(REPRO)}
    plot_training_curves(runs, tmp_path / "unused.png")
    axes = saved["figure"].axes
    assert [ax.get_title() for ax in axes] == [
        "reward (mean score)", "accuracy", "response length (tokens)", "entropy (nats / token)",
        "repro/process_adv_abs_mean", "corr/rho_mean"]
    lines = {ax.get_title(): {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()} for ax in axes}
    assert lines["accuracy"] == {"grpo": [0.25, 0.5], "repro_grpo": [0.25, 0.75]}
    assert lines["repro/process_adv_abs_mean"] == {"repro_grpo": [0.7, 0.6]}
    assert lines["corr/rho_mean"] == {}
    assert "not logged" in axes[PANELS.index("rho")].texts[0].get_text()


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_runs([tmp_path / "missing.jsonl"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UsageError, match="no training step"):
        load_runs([empty])
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"loss": 1}\n')
    with pytest.raises(UsageError, match="wrong.jsonl:1 is not a veRL metrics line"):
        load_runs([wrong])
    with pytest.raises(UsageError, match="2 --labels for 1"):
        load_runs([empty], ["a", "b"])
    run_dir = _write(tmp_path / "run" / "metrics.jsonl", GRPO).parent
    with pytest.raises(UsageError, match=r"run is a folder, not a metrics file; did you mean .*run/metrics\.jsonl\?"):
        load_runs([run_dir])


@pytest.mark.parametrize(
    "step, shown",
    [("null", "null"), ("Infinity", "Infinity"), ("NaN", "NaN"), ("[1]", "[1]"), ('"2"', '"2"'), ("true", "true"),
     ("1.5", "1.5")],  # 1.5 used to be read as step 1, silently replacing it
)
def test_a_step_is_a_whole_number(tmp_path, step, shown):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "data": {"critic/score/mean": 0.5}}\n{"step": %s, "data": {}}\n' % step)
    with pytest.raises(UsageError, match=r"metrics\.jsonl:2: the step must be a whole number, got " + re.escape(shown) + "$"):
        parse_metrics(path)


def test_corrupt_lines_are_counted_and_huge_values_kept_as_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1.0, "data": {"critic/score/mean": 0.5, "big": 1e400, "huge_int": %d}}\n'
                    'garbage\n{"step": 2, "data": {"critic/score/mean": 1e300}}\n{"step": 3, "da' % 10**400)
    metrics, skipped = parse_metrics(path)
    assert sorted(metrics) == [1, 2] and skipped == 2  # "garbage" and the half-written last line
    assert metrics[1]["big"] == float("inf") and metrics[1]["huge_int"] == float("inf")
    assert series(metrics, "reward") == ([1, 2], [0.5, 1e300])


def test_plot_refuses_a_name_it_would_not_write_and_says_what_it_wrote(tmp_path, capsys):
    from verl_repro.cli import main

    grpo = _write(tmp_path / "grpo" / "metrics.jsonl", GRPO + [(3, {"critic/score/mean": 1e300})])
    grpo.open("a").write("not json\n")
    assert main(["plot", str(grpo), "--output", str(tmp_path / "curves")]) == 2  # matplotlib would write curves.png
    assert capsys.readouterr().err == f"verl-repro plot: error: --output must name a .png file, got '{tmp_path / 'curves'}'\n"
    assert main(["plot", str(grpo), "--output", str(tmp_path / "curves.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'curves.png'} (grpo: 3 steps, 1 unreadable lines skipped)\n"


def test_a_run_keeps_its_colour_in_every_panel(tmp_path, monkeypatch):
    from verl_repro.analysis import figures

    saved = {}
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: saved.setdefault("figure", figure) and path)
    plot_training_curves({"grpo": dict(GRPO), "repro_grpo": dict(REPRO)}, tmp_path / "unused.png")
    colours = {}
    for ax in saved["figure"].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()) and colours["grpo"] != colours["repro_grpo"]
