"""The grid figure as the paper's Fig. 1: a colour per (K, T), solid θ_B and dashed θ_BC lines."""

from __future__ import annotations

from pathlib import Path

from retune_cli.plots import run_styles
from retune_cli.rundir import CONFIG, config_values


def runs(weights: tuple[str, ...] = ("bands",)) -> dict[str, dict[str, object]]:
    """A K=1,10 T=1,10 grid (× weights): label → its config values, as config_values gives them."""
    return {f"K{k}-T{t}-{w}": {"train.K": k, "train.T": t, "model.weights": w, "train.lr": 0.05}
            for w in weights for k in (1, 10) for t in (1, 10)}


def test_each_k_t_combination_has_its_own_colour_and_solid_lines() -> None:
    styles = run_styles(runs())
    assert len({colour for colour, _ in styles.values()}) == 4
    assert {style for _, style in styles.values()} == {"-"}
    assert styles["K1-T1-bands"] == ("C0", "-") and styles["K10-T10-bands"] == ("C3", "-")


def test_weights_set_the_style_and_keep_the_colour_of_k_t() -> None:
    styles = run_styles(runs(("bands", "bands-channels")))
    for k in (1, 10):
        for t in (1, 10):
            b, bc = styles[f"K{k}-T{t}-bands"], styles[f"K{k}-T{t}-bands-channels"]
            assert b[0] == bc[0] and (b[1], bc[1]) == ("-", "--")
    assert len({colour for colour, _ in styles.values()}) == 4


def test_a_grid_over_weights_alone_is_one_colour_two_styles() -> None:
    styles = run_styles({"bands": {"model.weights": "bands"}, "bc": {"model.weights": "bands-channels"},
                         "scales": {"model.weights": "scales"}})
    assert styles == {"bands": ("C0", "-"), "bc": ("C0", "--"), "scales": ("C0", "-.")}


def test_other_varied_values_colour_the_runs_and_unreadable_configs_still_plot(tmp_path: Path) -> None:
    styles = run_styles({"retune": {"train.gradient": "retune"}, "deq": {"train.gradient": "deq"}, "lost": {}})
    assert [colour for colour, _ in styles.values()] == ["C0", "C1", "C2"]
    (tmp_path / CONFIG).write_text("train: {K: 3, T: 2}\nmodel: {weights: bands-channels}\n")
    assert config_values(tmp_path) == {"train.K": 3, "train.T": 2, "model.weights": "bands-channels"}
    assert config_values(tmp_path / "missing") == {}
