"""Which scores should `combined` take the largest of? Every combination of one to three candidate
scores, each standardised by its median and IQR on the run's validation images, scored on the
visible families of `vae bench ood` (the held-out ones are never generated here).

    python benchmarks/combined_components.py runs/mnist-default --data-root ../shared/data \
        --out docs/results/ood-combinations-mnist.json

Prints the combinations by their worst visible-family AUROC; writes every combination's per-family
AUROC and flag rate (at the 99 % quantile of the combination on the validation images).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from model.anomaly.scoring import score_split
from model.bench.anomaly import auroc
from model.bench.families import FAMILIES, HELD_OUT, generate
from model.bench.ood import OTHER_DATASETS, _subset
from model.data.loading import load_data, load_raw
from model.runs.checkpoint import load_checkpoint

CANDIDATES = ("iwae", "elbo", "reconstruction", "relative_reconstruction", "complexity", "excess")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--test-subset", type=int, default=2000)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.run_dir)
    data = load_data(checkpoint.config)
    normal = _subset(data.test.x, args.test_subset, 0)
    sets = {"calibration": data.validation.x, "normal": normal}
    for i, family in enumerate(FAMILIES):  # seeds as `vae bench ood` draws them
        if family not in HELD_OUT:
            sets[family] = generate(family, normal, 1 + i)
    for other in OTHER_DATASETS[checkpoint.config.data.dataset]:
        data_dir = None if other == "embedded" else str(Path(args.data_root) / other)
        sets[other] = _subset(load_raw(other, data_dir)[1].x, args.test_subset, 0)
    bounds = np.cumsum([0, *(len(v) for v in sets.values())])
    torch.manual_seed(0)
    values, _ = score_split(checkpoint.model, torch.cat(list(sets.values())), list(CANDIDATES), k=args.k)
    raw = {name: {key: values[name].numpy()[bounds[i]:bounds[i + 1]] for i, key in enumerate(sets)}
           for name in CANDIDATES}
    rows = []
    for size in (1, 2, 3):
        for combo in itertools.combinations(CANDIDATES, size):
            z = {}
            for key in sets:
                parts = []
                for name in combo:
                    q25, q50, q75 = np.quantile(raw[name]["calibration"], [0.25, 0.5, 0.75])
                    parts.append((raw[name][key] - q50) / max(q75 - q25, 1e-6))
                z[key] = np.max(parts, 0)
            threshold = np.quantile(z["calibration"], 0.99)
            families = {}
            for key in sets:
                if key in ("calibration", "normal"):
                    continue
                labels = np.r_[np.zeros(len(z["normal"])), np.ones(len(z[key]))]
                families[key] = {"auroc": auroc(np.r_[z["normal"], z[key]], labels),
                                 "flagged": float((z[key] > threshold).mean())}
            rows.append({"components": list(combo), "normal_flagged": float((z["normal"] > threshold).mean()),
                         "worst_auroc": min(f["auroc"] for f in families.values()),
                         "worst_auroc_without_flips": min(f["auroc"] for k, f in families.items()
                                                          if not k.startswith("flip")),
                         "families": families})
    rows.sort(key=lambda r: -r["worst_auroc_without_flips"])
    for row in rows[:10]:
        print(f"{row['worst_auroc_without_flips']:.3f}  {'+'.join(row['components'])}")
    Path(args.out).write_text(json.dumps({"run": args.run_dir, "combinations": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
