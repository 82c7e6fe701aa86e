"""Properties of the auxiliary deep generative model (`--kind adgm --labels N`, Maaløe et al. 2016)."""

import pytest
import torch

from model import iwae_bound, load_checkpoint
from model.cli.main import main
from model.config.train import ConfigError, TrainConfig
from model.core.labels import UNLABELLED
from model.core.noise import RowwiseNoise, rsample
from model.kinds.adgm import AuxiliaryDeepGenerativeModel, adgm_loss
from model.kinds.base import LatentModel
from model.runs.checkpoint import CALIBRATION, CLASSIFIER, CONFIG, EVALUATION, MANIFEST, METRICS, WEIGHTS
from conftest import mean_noise


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AuxiliaryDeepGenerativeModel((1, 28, 28), latent_features=3, auxiliary_features=4, classes=range(10),
                                        hidden=(32, 16))


@pytest.fixture
def small():
    """Few pixels and few classes: bounds close enough to log p(x) for L_K's growth to show."""
    torch.manual_seed(2)
    return AuxiliaryDeepGenerativeModel((1, 4, 4), latent_features=2, auxiliary_features=2, classes=(0, 1, 2),
                                        hidden=(16,))


@pytest.mark.parametrize("kl", ["sampled", "analytic"])
def test_unlabelled_bound_is_the_q_weighted_sum_of_labelled_bounds_plus_entropy(model, kl):
    x = torch.rand(7, 1, 28, 28)
    noise = mean_noise()
    qa = model.auxiliary_posterior(x)
    a = rsample(qa, (), noise)  # the mean of q(a|x)
    unlabelled = model.unlabelled_terms(x, a, kl, noise).elbo
    qy = model.qy(x, a)
    labelled_bounds = torch.stack([
        model.labelled_terms(x, a, torch.full((7,), c), kl, noise).bound for c in range(10)
    ], dim=1)  # (B, C)
    expected = (qy.probs * labelled_bounds).sum(1) + qy.entropy()
    torch.testing.assert_close(unlabelled, expected, atol=1e-3, rtol=1e-5)
    # and elbo_terms is the same U(x) at the same a
    torch.testing.assert_close(model.elbo_terms(x, kl, noise).elbo, expected, atol=1e-3, rtol=1e-5)


def test_labelled_bound_holds_every_term_of_eq_6(model):
    x = torch.rand(3, 1, 28, 28)
    noise = mean_noise()
    qa = model.auxiliary_posterior(x)
    a = qa.mu
    index = torch.tensor([0, 4, 9])
    terms = model.labelled_terms(x, a, index, "sampled", noise)
    y_one_hot = torch.nn.functional.one_hot(index, 10).float()
    qz = model.posterior(x, a, y_one_hot)
    z = qz.mu
    expected = (model.observation_model(z, y_one_hot).log_prob(x).flatten(1).sum(1) + torch.log(torch.tensor(0.1))
                + model.prior(z.shape[:-1]).log_prob(z).sum(1) + model.auxiliary_prior(x, z, y_one_hot).log_prob(a).sum(1)
                - qa.log_prob(a).sum(1) - qz.log_prob(z).sum(1))
    torch.testing.assert_close(terms.bound, expected, atol=1e-3, rtol=1e-5)


def test_loss_weighs_labelled_and_unlabelled_examples_as_eq_9(model):
    x = torch.rand(6, 1, 28, 28)
    y = torch.tensor([2, UNLABELLED, 5, UNLABELLED, UNLABELLED, 9])
    noise, alpha = mean_noise(), 7.0
    loss, diagnostics = adgm_loss(model, x, y, alpha, "analytic", noise)
    known = y != UNLABELLED
    a = model.auxiliary_posterior(x).mu
    l_xy = model.labelled_terms(x[known], a[known], y[known], "analytic", noise).bound
    u_x = model.unlabelled_terms(x[~known], a[~known], "analytic", noise).elbo
    ce = -model.qy(x, a).log_prob(y.clamp(min=0))[known]
    expected = ((-l_xy + alpha * ce).sum() - u_x.sum()) / 6
    torch.testing.assert_close(loss, expected, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(diagnostics["elbo"], diagnostics["log_px"] - diagnostics["kl"], atol=1e-3, rtol=1e-5)
    assert diagnostics["labelled"].tolist() == known.float().tolist()


def test_q_a_learns_through_the_class_weights_of_the_unlabelled_bound(model):
    # With the per-class bounds held fixed, U(x) depends on a only through q(y|a, x): its weights and
    # entropy. The gradient must reach q(a|x) through the reparameterized a.
    x = torch.rand(4, 1, 28, 28)
    qa = model.auxiliary_posterior(x)
    a = qa.rsample()
    every_class = torch.arange(10).unsqueeze(1).expand(-1, 4)
    bounds = model.labelled_terms(x, a, every_class).bound.detach()  # (C, B), constants
    qy = model.qy(x, a)
    ((qy.probs.T * bounds).sum(0) + qy.entropy()).sum().backward()
    grad = model.auxiliary_encoder[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.encoder.x.weight.grad is None  # nothing flowed through q(z|a, y, x)


def test_unlabelled_images_alone_train_the_classifier_and_q_a(model):
    loss, _ = adgm_loss(model, torch.rand(4, 1, 28, 28), torch.full((4,), UNLABELLED), alpha=1.0)
    loss.backward()
    for net in (model.classifier, model.auxiliary_encoder, model.auxiliary_decoder, model.encoder, model.decoder):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, type(net).__name__


def test_classify_is_a_deterministic_distribution_over_the_classes_averaged_over_a():
    torch.manual_seed(1)
    model = AuxiliaryDeepGenerativeModel((1, 28, 28), latent_features=2, auxiliary_features=3, classes=(3, 7),
                                         hidden=(16,))
    x = torch.rand(5, 1, 28, 28)
    probs = model.classify(x)
    assert probs.shape == (5, 2) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    torch.testing.assert_close(model.classify(x), probs)  # no fresh noise
    torch.testing.assert_close(model.classify(x[2:4]), probs[2:4])  # a row's answer ignores its batch
    with torch.no_grad():  # E_q(a|x)[q(y|a, x)] by many fresh draws: 16 fixed draws are close to it
        a = model.auxiliary_posterior(x).rsample((20000,))
        reference = model.qy(x, a).probs.mean(0)
    torch.testing.assert_close(probs, reference, atol=0.03, rtol=0)
    assert set(model.encode(x)["y"].tolist()) <= {3, 7}
    with pytest.raises(ValueError, match=r"expected class labels in \[3, 7\], got \[4\]"):
        model.decode(torch.zeros(1, 2), y=4)


def test_importance_weighted_bound_is_a_bound_that_rises_with_k(small):
    x = torch.rand(6, 1, 4, 4).round()
    torch.manual_seed(3)
    with torch.no_grad():
        # Means over independent estimates, drawn at once by repeating the batch.
        elbo = small.elbo_terms(x.repeat(400, 1, 1, 1)).elbo.reshape(400, 6).mean(0)  # E[U(x)]
        l_k = {k: iwae_bound(small, x.repeat(100, 1, 1, 1), k).reshape(100, 6).mean(0) for k in (1, 4, 64)}
        assert small.log_weights(x, 5).shape == (5, 6)
    # y summed out exactly: E[L_1] >= U(x) by Jensen; E[L_K] non-decreasing in K (Burda et al. 2015, thm 1).
    assert (l_k[1] >= elbo - 0.05).all(), (l_k[1], elbo)
    # Each mean over 100 estimates still has sampling error (a few hundredths here), hence the tolerance.
    assert (l_k[4] >= l_k[1] - 0.05).all() and l_k[4].mean() > l_k[1].mean(), l_k
    assert (l_k[64] >= l_k[4] - 0.05).all() and l_k[64].mean() > l_k[4].mean(), l_k


def test_seeded_rows_do_not_depend_on_the_batch(model):
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        together = model.log_weights(x, 4, noise=RowwiseNoise([1, 2], [1, 2]))
        alone = model.log_weights(x[1:], 4, noise=RowwiseNoise([2], [2]))
        torch.testing.assert_close(together[:, 1:], alone)
        maps = model.pixel_log_px(x, 2, noise=RowwiseNoise([1, 2], [1, 2]))
        torch.testing.assert_close(maps[:, 1:], model.pixel_log_px(x[1:], 2, noise=RowwiseNoise([2], [2])))
        a, b = (model.sample(4, noise=RowwiseNoise([3], [4])) for _ in range(2))
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["probs"], b["probs"])
    fixed = model.sample(3, y=8, noise=RowwiseNoise([3], [3]))
    assert fixed["y"].tolist() == [8, 8, 8] and fixed["probs"].shape == (3, 1, 28, 28)


def test_the_config_sizes_a_and_refuses_the_iwae_objective():
    from model.kinds.registry import build_model

    config = TrainConfig.of(kind="adgm", latent_features=3, hidden=(8,), input_shape=(1, 28, 28),
                            class_labels=(0, 1))
    assert build_model(config).auxiliary_features == 3  # as many as z by default
    assert build_model(config.replace(auxiliary_features=5)).describe()["auxiliary_features"] == 5
    with pytest.raises(ConfigError, match="auxiliary_features: expected >= 1"):
        TrainConfig.of(kind="adgm", auxiliary_features=0)
    with pytest.raises(ConfigError, match="--kind adgm trains with 'elbo'"):
        TrainConfig.of(kind="adgm", objective="iwae", k=2)


# --- a trained run: `vae train --kind adgm --labels N`, loaded, plotted and served ------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "adgm"
    code = main(["train", "--kind", "adgm", "--labels", "50", "--latent-features", "2", "--auxiliary-features", "3",
                 "--hidden", "32", "--epochs", "2", "--batch-size", "128", "--train-subset", "600", "--eval-k", "5",
                 "--calibration-k", "5", "--seed", "5", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_cli_run_is_a_complete_checkpoint_that_answers_every_operation(run):
    for name in (CONFIG, WEIGHTS, METRICS, EVALUATION, CLASSIFIER, CALIBRATION, MANIFEST):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run)
    model = checkpoint.model
    assert model.kind == "adgm" and checkpoint.manifest["kind"] == "adgm" and model.auxiliary_features == 3
    own = checkpoint.evaluation["kind"]
    assert own["training_labels"] == 50 and 0 <= own["test_error"] <= 1
    assert own["classifier"] == "E_q(a|x)[q(y|a,x)]"
    assert checkpoint.evaluation["classifier"]["train_images"] == 50  # the baselines get the same labels
    x = torch.rand(4, 1, 28, 28)
    encoded = model.encode(x, num_samples=3)
    assert encoded["mu"].shape == (4, 2) and encoded["a_mu"].shape == (4, 3) and encoded["z"].shape == (3, 4, 2)
    assert model.decode(encoded["mu"], encoded["y"]).shape == (4, 1, 28, 28)
    assert model.features(x).shape == (4, 10 + 2 + 3)
    assert torch.isfinite(model.elbo_terms(x).elbo).all() and torch.isfinite(iwae_bound(model, x, 10)).all()
    assert model.pixel_log_px(x, 2).shape == (2, 4, 1, 28, 28)
    assert model.reconstruct(x).shape == (4, 1, 28, 28)
    assert isinstance(model, LatentModel)
    assert model.capabilities.native_classifier and model.capabilities.conditional
    assert model.capabilities.semi_supervised and not model.capabilities.gaussian_latent
    assert main(["train", "--kind", "adgm", "--auxiliary-features", "0", "--out", str(run.parent / "bad")]) == 2


def test_kind_plots_draw_conditional_generation_and_analogies(run, tmp_path):
    from model.analysis.kind_plots import KIND_PLOTS, MODE_OBSERVATIONS
    from model.data.loading import load_data

    checkpoint = load_checkpoint(run)
    test = load_data(checkpoint.config).test
    paths = KIND_PLOTS["adgm"](checkpoint.model, checkpoint.config, test, tmp_path)
    assert [p.name for p in paths] == ["conditional_generation.png", "analogies.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(MODE_OBSERVATIONS["adgm"](checkpoint.model, x).mean, checkpoint.model.reconstruct(x))


def test_the_service_serves_adgm_after_warming_up_every_operation(run, asgi_client):
    pytest.importorskip("fastapi")
    from service.app import create_app
    from service.settings import Settings

    client = asgi_client(create_app(Settings(model_dir=run.parent, max_wait_ms=0)))
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["adgm"]["ready"], models["adgm"]
    assert {"encode", "decode", "sample", "reconstruct", "elbo", "iwae", "classify", "anomaly"} <= set(
        models["adgm"]["operations"])
    detail = client.get("/models/adgm").json()
    assert detail["kind"] == "adgm" and detail["classes"] == list(range(10))
    assert detail["describe"]["decode_inputs"] == ["z", "y"]
    images = torch.rand(3, 784).tolist()
    classified = client.post("/models/adgm/classify", json={"images": images}).json()
    probs = torch.tensor(classified["probs"])
    torch.testing.assert_close(probs.sum(1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs, load_checkpoint(run).model.classify(torch.tensor(images)), atol=1e-5, rtol=0)
    assert classified["labels"] == probs.argmax(1).tolist()
    iwae = client.post("/models/adgm/iwae", json={"images": images, "k": 8, "seed": 0})
    assert iwae.status_code == 200, iwae.text
    log_px = torch.tensor(iwae.json()["log_px"])
    assert log_px.shape == (3,) and torch.isfinite(log_px).all() and (log_px < 0).all()
    again = client.post("/models/adgm/iwae", json={"images": images, "k": 8, "seed": 0}).json()["log_px"]
    assert again == iwae.json()["log_px"]  # seeded
    sampled = client.post("/models/adgm/sample", json={"n": 2, "y": 7, "seed": 0}).json()
    assert sampled["y"] == [7, 7]
    decoded = client.post("/models/adgm/decode", json={"z": sampled["z"], "y": [1, 2]})
    assert decoded.status_code == 200 and len(decoded.json()["probs"]) == 2
    missing = client.post("/models/adgm/decode", json={"z": sampled["z"]})
    assert missing.status_code == 422 and "pass y" in missing.json()["error"]
    encoded = client.post("/models/adgm/encode", json={"images": images, "num_samples": 2, "seed": 0}).json()
    assert {"probs", "y", "mu", "sigma", "a_mu", "a_sigma", "z"} <= encoded.keys()
    for operation, body in (("elbo", {"seed": 0}), ("reconstruct", {}), ("anomaly", {"seed": 0})):
        response = client.post(f"/models/adgm/{operation}", json={"images": images, **body})
        assert response.status_code == 200, (operation, response.text)
