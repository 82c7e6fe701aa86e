"""The out-of-distribution suite (`vae bench ood`) and the `combined` score it chose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import load_checkpoint
from model.anomaly.combined import COMPONENTS, standardisation, standardise
from model.anomaly.registry import SCORES
from model.bench.families import FAMILIES, HELD_OUT, generate
from model.bench.ood import OodConfig, render, run_ood, worst


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 40, 32)])
def test_every_family_is_seeded_and_keeps_the_images_shape_and_range(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    for name in FAMILIES:
        out = generate(name, x, seed=3)
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1, name
        assert torch.equal(out, generate(name, x, seed=3)), name
    assert not torch.equal(generate("uniform_noise", x, 1), generate("uniform_noise", x, 2))
    assert set(HELD_OUT) <= set(FAMILIES) and len(FAMILIES) - len(HELD_OUT) >= 12


def test_combined_is_the_largest_standardised_component_as_calibrated(tiny_run):
    checkpoint = load_checkpoint(tiny_run)
    calibration = checkpoint.calibration.scores
    combined = calibration["combined"]
    assert combined.params == {**standardisation({c: calibration[c] for c in COMPONENTS}), "k": 10}
    for name in COMPONENTS:  # the median and IQR of the component on the calibration images
        assert combined.params[f"centre_{name}"] == pytest.approx(calibration[name].value_at(0.5))
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    got = SCORES["combined"](checkpoint.model, x, **combined.params)
    torch.manual_seed(0)
    parts = {name: SCORES[name](checkpoint.model, x, k=10) for name in COMPONENTS}
    expected = torch.stack([(parts[n] - combined.params[f"centre_{n}"]) / combined.params[f"scale_{n}"]
                            for n in COMPONENTS]).amax(0)
    torch.testing.assert_close(got, expected)
    assert torch.equal(standardise(parts, combined.params), expected)
    with pytest.raises(ValueError, match="needs its calibration"):
        SCORES["combined"](checkpoint.model, x, k=10)


def test_the_suite_scores_a_run_as_it_is_served(tiny_run):
    families = ("saturated", "blank", "binary_noise")
    result = run_ood(tiny_run, OodConfig(families=families, scores=("iwae", "combined"), test_subset=60))
    assert result["normal_images"] == 60 and result["families"] == list(families)
    for score in ("iwae", "combined"):
        for family in families:
            entry = result["scores"][score][family]
            assert 0 <= entry["auroc"] <= 1 and 0 <= entry["flagged"] <= 1
    # An all-white image is nothing a Bernoulli decoder of digits gives probability to.
    assert result["scores"]["iwae"]["saturated"] == {"auroc": 1.0, "flagged": 1.0}
    assert worst(result, "iwae")["auroc"] == min(result["scores"]["iwae"][f]["auroc"] for f in families)
    table = render(result)
    assert all(f"| {family} |" in table for family in families) and "`combined`" in table
    with pytest.raises(ValueError, match="the run calibrated"):
        run_ood(tiny_run, OodConfig(families=families, scores=("nope",)))
    assert np.isfinite(result["seconds"])


def test_rankings_follow_the_worst_visible_family_not_the_mean(tmp_path):
    from model.bench.rankings import update_rankings, worst_case_ranking

    def fam(auroc, flagged=0.5):
        return {"auroc": auroc, "flagged": flagged}

    result = {"dataset": "mnist", "held_out": ["zigzag"], "scores": {
        "steady": {"normal": {"flagged": 0.01}, "noise": fam(0.96), "blank": fam(0.95), "zigzag": fam(0.1)},
        "brilliant_but_blind": {"normal": {"flagged": 0.01}, "noise": fam(1.0), "blank": fam(0.6),
                                "zigzag": fam(1.0)},
        "steady_rarely_flags": {"normal": {"flagged": 0.01}, "noise": fam(0.96), "blank": fam(0.95, 0.1),
                                "zigzag": fam(1.0)},
    }}
    # Means would put brilliant_but_blind first (0.80 against 0.955); the worst case puts it last, and
    # a held-out family (zigzag) does not count.
    assert list(worst_case_ranking(result)) == ["steady", "steady_rarely_flags", "brilliant_but_blind"]
    path = tmp_path / "rankings.json"
    path.write_text('{"source": "bench", "rankings": {"fashion-mnist": ["excess"]}, "means": {"mnist": {}}}')
    written = update_rankings(result, path)
    assert written["rankings"] == {"fashion-mnist": ["excess"],
                                   "mnist": ["steady", "steady_rarely_flags", "brilliant_but_blind"]}
    assert "mnist" not in written["means"] and written["worst_case"]["mnist"]["steady"] == {"auroc": 0.95,
                                                                                            "flagged": 0.5}


def test_the_ood_command_writes_its_table_and_results(tiny_run, tmp_path, capsys):
    from model.cli.main import main

    out = tmp_path / "ood.json"
    assert main(["bench", "ood", str(tiny_run), "--families", "blank", "saturated", "--scores", "iwae", "combined",
                 "--test-subset", "40", "--out", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert result["families"] == ["blank", "saturated"] and set(result["scores"]) == {"iwae", "combined"}
    assert out.with_suffix(".md").read_text().strip() == capsys.readouterr().out.strip()
