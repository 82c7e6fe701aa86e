#!/usr/bin/env bash
# Copy the figures docs/analysis.md cites from the sweep reports and demos into docs/figures.
# Run after the commands of "Regenerating everything" in docs/analysis.md.
set -euo pipefail
S=${SWEEPS:-/tmp/sweeps}
D=${DEMOS:-/tmp/demos}
F=$(dirname "$0")

for sweep in ex4 ex3.2 ex3.3 ex3.1 opt; do
    cp "$S/$sweep/learning_curves.png" "$F/$sweep-learning-curves.png"
done
cp "$S/ex4/rate_distortion.png" "$F/ex4-rate-distortion.png"

fig() {  # fig SWEEP RUN PLOT → docs/figures/SWEEP-PLOT-RUN.png
    cp "$S/$1/report/$2/$3.png" "$F/$1-${3//_/-}-$2.png"
}
fig ex4 beta-0 latent; fig ex4 beta-1 latent; fig ex4 beta-10 latent; fig ex4 beta-50 latent
fig ex4 beta-0 reconstructions; fig ex4 beta-1 reconstructions; fig ex4 beta-50 reconstructions
fig ex4 beta-0 samples; fig ex4 beta-1 samples
fig ex4 beta-1 manifold; fig ex4 beta-1 interpolations; fig ex4 beta-1 learning_curves
fig ex3.2 digits-0-1-4-9 latent; fig ex3.2 digits-all latent
fig ex3.2 digits-0-1-4-9 reconstructions; fig ex3.2 digits-all reconstructions; fig ex3.2 digits-all manifold
fig ex3.3 latent-10 latent; fig ex3.3 latent-10 reconstructions; fig ex3.3 latent-32 unit_kl
fig ex3.1 relu-512-256-128 latent; fig ex3.1 tanh-512-256-128-64 latent
fig opt categorical-20x10 samples

cp "$D/importance-sampling/importance_sampling.png" "$F/importance-sampling.png"
cp "$D/bounds-ex4-beta-1/bounds.png" "$F/bounds-ex4-beta-1.png"
cp "$D/bounds-ex3.3-latent-10/bounds.png" "$F/bounds-ex3.3-latent-10.png"
cp "$D/reparameterization-ex4-beta-1/reparameterization.png" "$F/reparameterization-ex4-beta-1.png"
