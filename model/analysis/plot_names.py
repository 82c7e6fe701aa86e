"""The names of a run's plots (each drawn as NAME.png), apart from the code that draws them, so
`vae plot --only` can offer them without importing matplotlib: `vae serve` builds the same parser
where matplotlib is not installed."""

# Every kind draws the first four; the last three need a Gaussian latent (Capabilities.gaussian_latent).
GAUSSIAN_PLOTS = ("reconstructions", "latent", "learning_curves", "samples", "interpolations", "manifold", "unit_kl")
# What `model.analysis.kind_plots.KIND_PLOTS` draws for a kind, after the plots above.
KIND_PLOT_NAMES = {"categorical": ("category_codes", "category_usage"), "m2": ("conditional_generation", "analogies"),
                   "adgm": ("conditional_generation", "analogies")}
