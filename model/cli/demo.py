"""`vae demo ...`: the supplementary material's demonstrations (model.analysis.demos), each written
as JSON and PNG: importance sampling, the ordering of the bounds, the reparameterization trick."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.data.loading import load_data
from model.io.atomic import write_json
from model.runs.checkpoint import load_model


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the supplementary material's demonstrations")
    demos = demo.add_subparsers(dest="demo", required=True, metavar="DEMO")
    importance = demos.add_parser("importance-sampling", help="estimate E_p[z] from samples of q")
    importance.add_argument("--out", default="runs/demos", help="folder for the JSON and PNG (default: runs/demos)")
    importance.add_argument("--samples", type=int, default=10_000)
    importance.add_argument("--seed", type=int, default=0)
    importance.set_defaults(handler=importance_sampling)
    bounds_ = demos.add_parser("bounds", help="log p(x) >= L_(K+1) >= L_K >= ELBO on a trained run, K = 1..5000")
    bounds_.add_argument("run_dir")
    bounds_.add_argument("--out", help="folder for bounds.json and bounds.png (default: RUN_DIR/demos)")
    bounds_.add_argument("--images", type=int, default=200, help="test images (default: 200)")
    bounds_.add_argument("--k-max", type=int, default=5000, help="largest K (default: 5000)")
    bounds_.add_argument("--seed", type=int, default=0)
    bounds_.add_argument("--data-dir", help="where the run's data set lives, if not where its config says")
    bounds_.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    bounds_.set_defaults(handler=bounds)
    reparam = demos.add_parser("reparameterization", help="pathwise against score-function gradients on a run")
    reparam.add_argument("run_dir")
    reparam.add_argument("--out", help="folder for the JSON and PNG (default: RUN_DIR/demos)")
    reparam.add_argument("--images", type=int, default=20, help="test images (default: 20)")
    reparam.add_argument("--samples", type=int, default=2000, help="draws per estimator and image (default: 2000)")
    reparam.add_argument("--seed", type=int, default=0)
    reparam.add_argument("--data-dir", help="where the run's data set lives, if not where its config says")
    reparam.set_defaults(handler=reparameterization)


def _model_and_test_split(args: argparse.Namespace):
    """The run's model and its test split (read from --data-dir if given)."""
    model, config = load_model(args.run_dir)
    return model, load_data(config.replace(data_dir=args.data_dir) if args.data_dir else config).test


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(args.run_dir) / "demos"


def importance_sampling(args: argparse.Namespace) -> int:
    # Keeps matplotlib off `vae serve`'s path: the serve image has no matplotlib.
    from model.analysis import demos

    out = Path(args.out)
    result = demos.importance_sampling(args.samples, seed=args.seed)
    demos.plot_importance_sampling(result, out / "importance_sampling.png")
    write_json(out / "importance_sampling.json", result)
    print(f"E_p[z] = 5; empirical mean of {args.samples:,} p samples {result['empirical_mean_of_p_samples']:.3f}; "
          f"importance-weighted estimate from q samples {result['estimate']:.3f} "
          f"(self-normalised {result['self_normalised_estimate']:.3f}, ESS {result['effective_sample_size']:.0f}); "
          f"written to {out}")
    return 0


def bounds(args: argparse.Namespace) -> int:
    # Keeps matplotlib off `vae serve`'s path: the serve image has no matplotlib.
    from model.analysis import demos

    if args.threads:
        torch.set_num_threads(args.threads)
    model, test = _model_and_test_split(args)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.images]
    result = demos.bound_ordering(model, test.x[pick], demos.ks_up_to(args.k_max), seed=args.seed)
    result["run"] = str(args.run_dir)
    out = _out(args)
    write_json(out / "bounds.json", result)
    demos.plot_bound_ordering(result, out / "bounds.png")
    for r in result["rows"]:
        print(f"L_{r['k']:<5d} {r['bound']:9.3f}   L_K - L_1 {r['gain_over_first']:7.3f} ± {r['gain_se']:.3f}   "
              f"step {r['step']:+.3f} ± {r['step_se']:.3f}")
    print(f"ELBO (analytic KL) {result['elbo_analytic_kl']:.3f}")
    if "quadrature_log_px" in result:
        print(f"log p(x) by quadrature {result['quadrature_log_px']:.3f}")
    print(f"ordering holds for every measured K: {result['monotone']}; written to {out}")
    return 0


def reparameterization(args: argparse.Namespace) -> int:
    # Keeps matplotlib off `vae serve`'s path: the serve image has no matplotlib.
    from model.analysis import demos

    model, test = _model_and_test_split(args)
    summary = {"run": str(args.run_dir), **demos.reparameterization(model, test.x[: args.images], args.samples,
                                                                      seed=args.seed)}
    out = _out(args)
    demos.plot_gradient_estimators(summary["per_image"], out / "reparameterization.png")
    write_json(out / "reparameterization.json", summary)
    print(f"std of the score-function gradient / std of the pathwise gradient over {summary['images']} test images "
          f"and every latent unit: median {summary['median_std_ratio_score_over_pathwise']:.1f} without a "
          f"baseline, {summary['median_std_ratio_baseline_over_pathwise']:.1f} with one "
          f"(smallest {summary['min_std_ratio_baseline_over_pathwise']:.1f}); written to {out}")
    return 0
