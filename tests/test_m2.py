"""Properties of the semi-supervised M2 model (`--kind m2 --labels N`)."""


import pytest
import torch

from model import TrainConfig, iwae_bound, load_checkpoint
from model.runs.checkpoint import CALIBRATION, CLASSIFIER, CONFIG, EVALUATION, MANIFEST, METRICS, WEIGHTS
from model.cli.main import main
from model.core.labels import UNLABELLED
from model.data.base import DataError, Split
from model.data.transforms import hide_labels, labelled
from model.data.loading import load_data
from model.kinds.m2 import SemiSupervisedVAE, m2_loss
from model.core.noise import RowwiseNoise
from model.runs.train import train
from conftest import mean_noise
from model.kinds.base import LatentModel

TINY = dict(kind="m2", labels=50, latent_features=2, hidden=(32,), epochs=2, batch_size=128, train_subset=600,
            eval_k=10, calibration_k=5, seed=5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SemiSupervisedVAE((1, 28, 28), latent_features=3, classes=range(10), hidden=(32, 16))


@pytest.mark.parametrize("kl", ["sampled", "analytic"])
def test_unlabelled_bound_is_the_q_weighted_sum_of_labelled_bounds_plus_entropy(model, kl):
    x = torch.rand(7, 1, 28, 28)
    noise = mean_noise()
    unlabelled = model.unlabelled_terms(x, kl, noise).elbo
    qy = model.qy(x)
    labelled_bounds = torch.stack([
        model.labelled_terms(x, torch.full((7,), c), kl, noise).bound for c in range(10)
    ], dim=1)  # (B, C)
    expected = (qy.probs * labelled_bounds).sum(1) + qy.entropy()
    assert torch.allclose(unlabelled, expected, atol=1e-3)


def test_q_y_given_x_is_a_distribution_over_the_configured_classes():
    torch.manual_seed(1)
    model = SemiSupervisedVAE((1, 28, 28), latent_features=2, classes=(3, 7), hidden=(16,))
    probs = model.classify(torch.rand(5, 1, 28, 28))
    assert probs.shape == (5, 2) and (probs >= 0).all() and torch.allclose(probs.sum(1), torch.ones(5))
    assert set(model.encode(torch.rand(5, 1, 28, 28))["y"].tolist()) <= {3, 7}
    with pytest.raises(ValueError, match=r"expected class labels in \[3, 7\], got \[4\]"):
        model.decode(torch.zeros(1, 2), y=4)


def test_loss_weighs_labelled_and_unlabelled_examples_as_eq_9(model):
    x = torch.rand(6, 1, 28, 28)
    y = torch.tensor([2, UNLABELLED, 5, UNLABELLED, UNLABELLED, 9])
    noise = mean_noise()
    alpha = 7.0
    loss, diagnostics = m2_loss(model, x, y, alpha, "analytic", noise)
    known = y != UNLABELLED
    qy = model.qy(x)
    l_xy = model.labelled_terms(x[known], y[known], "analytic", noise).bound
    u_x = model.unlabelled_terms(x[~known], "analytic", noise).elbo
    ce = -qy.log_prob(y.clamp(min=0))[known]
    expected = ((-l_xy + alpha * ce).sum() - u_x.sum()) / 6
    assert torch.allclose(loss, expected, atol=1e-3)
    assert torch.allclose(diagnostics["elbo"], diagnostics["log_px"] - diagnostics["kl"], atol=1e-3)
    assert diagnostics["labelled"].tolist() == known.float().tolist()


def test_unlabelled_images_alone_train_the_classifier(model):
    # U(x) weighs each class's bound by q(y|x): its gradient reaches q(y|x) without any label.
    loss, _ = m2_loss(model, torch.rand(4, 1, 28, 28), torch.full((4,), UNLABELLED), alpha=1.0)
    loss.backward()
    grad = model.classifier[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_importance_weighted_bound_is_at_least_the_unlabelled_bound(model):
    x = torch.rand(4, 1, 28, 28).round()
    with torch.no_grad():
        torch.manual_seed(3)
        elbo = torch.stack([model.elbo_terms(x, kl="analytic").elbo for _ in range(20)]).mean(0)
        l_k = iwae_bound(model, x, 2000)
        log_w = model.log_weights(x, 5)
    assert log_w.shape == (5, 4)
    assert (l_k >= elbo - 0.5).all(), (l_k, elbo)


def test_seeded_noise_makes_sampling_reproducible(model):
    a = model.sample(4, noise=RowwiseNoise([3], [4]))
    b = model.sample(4, noise=RowwiseNoise([3], [4]))
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["probs"], b["probs"])
    fixed = model.sample(3, y=8, noise=RowwiseNoise([3], [3]))
    assert fixed["y"].tolist() == [8, 8, 8] and fixed["probs"].shape == (3, 1, 28, 28)


def test_decode_needs_a_class(model):
    with pytest.raises(ValueError, match="pass y"):
        model.decode(torch.zeros(2, 3))
    assert model.decode(torch.zeros(2, 3), y=torch.tensor([0, 9])).shape == (2, 1, 28, 28)
    # The class changes the image: same style, different digits.
    assert not torch.allclose(model.decode(torch.zeros(1, 3), y=0), model.decode(torch.zeros(1, 3), y=1))


def test_hidden_labels_are_balanced_seeded_and_counted():
    split = Split(torch.rand(1000, 1, 28, 28), torch.arange(1000) % 10)
    kept = hide_labels(split, 100, seed=0)
    known = kept.y != UNLABELLED
    assert int(known.sum()) == 100
    assert torch.bincount(kept.y[known], minlength=10).tolist() == [10] * 10
    assert torch.equal(kept.y[known], split.y[known])  # kept labels are the true ones
    assert torch.equal(hide_labels(split, 100, seed=0).y, kept.y)
    assert not torch.equal(hide_labels(split, 100, seed=1).y, kept.y)
    assert torch.bincount(labelled(hide_labels(split, 25, seed=0)).y).tolist() == [3] * 5 + [2] * 5
    with pytest.raises(DataError, match="expected at least 101 training images of class 0"):
        hide_labels(split, 1010, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = TrainConfig.of(**TINY)
    return train(config, tmp_path_factory.mktemp("runs") / "m2", data=load_data(config), progress=False)


def test_every_training_batch_carries_labelled_images():
    from model.data.base import Split
    from model.data.batches import labelled_batches

    y = torch.full((1000,), UNLABELLED)
    y[:10] = torch.arange(10)
    split = Split(torch.rand(1000, 1, 28, 28), y)
    batches = list(labelled_batches(split, 64, "none"))
    assert len(batches) == 16  # one pass over the 990 unlabelled images
    assert all((b_y != UNLABELLED).sum() == 10 for _, b_y in batches)  # min(64, 10 labels) each step
    unlabelled_seen = sum(int((b_y == UNLABELLED).sum()) for _, b_y in batches)
    assert unlabelled_seen == 990
    labelled_only = Split(split.x[:10], split.y[:10])
    assert sum(len(b_y) for _, b_y in labelled_batches(labelled_only, 4, "none")) == 10


def test_tiny_run_is_a_complete_checkpoint_that_answers_every_operation(run):
    for name in (CONFIG, WEIGHTS, METRICS, EVALUATION, CLASSIFIER, CALIBRATION, MANIFEST):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run)
    model = checkpoint.model
    assert model.kind == "m2" and checkpoint.manifest["kind"] == "m2"
    own = checkpoint.evaluation["kind"]
    assert own["training_labels"] == 50 and 0 <= own["test_error"] <= 1
    assert checkpoint.evaluation["classifier"]["train_images"] == 50  # baselines get the same labels
    x = torch.rand(4, 1, 28, 28)
    probs = model.classify(x)
    assert probs.shape == (4, 10) and torch.allclose(probs.sum(1), torch.ones(4))
    encoded = model.encode(x, num_samples=3)
    assert encoded["mu"].shape == (4, 2) and encoded["z"].shape == (3, 4, 2) and encoded["y"].shape == (4,)
    assert model.decode(encoded["mu"], encoded["y"]).shape == (4, 1, 28, 28)
    assert model.sample(2, y=torch.tensor([1, 2]))["probs"].shape == (2, 1, 28, 28)
    assert torch.isfinite(model.elbo_terms(x).elbo).all()
    assert torch.isfinite(iwae_bound(model, x, 10)).all()
    assert model.reconstruct(x).shape == (4, 1, 28, 28)
    assert model.describe()["classes"] == list(range(10))
    assert isinstance(model, LatentModel)  # the face the service needs: encode, decode, sample, elbo, ...
    assert model.capabilities.native_classifier and model.capabilities.conditional


def test_cli_takes_labels(tmp_path):
    code = main(["train", "--kind", "m2", "--labels", "20", "--latent-features", "2", "--hidden", "16",
                 "--epochs", "1", "--train-subset", "200", "--eval-k", "2", "--calibration-k", "2", "--quiet",
                 "--out", str(tmp_path / "m2")])
    assert code == 0
    assert load_checkpoint(tmp_path / "m2").evaluation["kind"]["training_labels"] == 20
    assert main(["train", "--kind", "m2", "--labels", "0", "--out", str(tmp_path / "bad")]) == 2


def test_kind_plots_draw_conditional_generation_and_analogies(run, tmp_path):
    from model.analysis.kind_plots import KIND_PLOTS

    checkpoint = load_checkpoint(run)
    test = load_data(checkpoint.config).test
    paths = KIND_PLOTS["m2"](checkpoint.model, checkpoint.config, test, tmp_path)
    assert [p.name for p in paths] == ["conditional_generation.png", "analogies.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_the_service_serves_m2_with_classes(run, asgi_client):
    pytest.importorskip("fastapi")
    from service.app import create_app
    from service.settings import Settings

    client = asgi_client(create_app(Settings(model_dir=run.parent, max_wait_ms=0)))
    detail = client.get("/models/m2").json()
    assert detail["kind"] == "m2" and detail["classes"] == list(range(10))
    assert detail["describe"]["decode_inputs"] == ["z", "y"]
    images = torch.rand(3, 784).tolist()
    classified = client.post("/models/m2/classify", json={"images": images}).json()
    probs = torch.tensor(classified["probs"])
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(probs, load_checkpoint(run).model.classify(torch.tensor(images)), atol=1e-5)
    sampled = client.post("/models/m2/sample", json={"n": 2, "y": 7, "seed": 0}).json()
    assert sampled["y"] == [7, 7]
    decoded = client.post("/models/m2/decode", json={"z": sampled["z"], "y": [1, 2]})
    assert decoded.status_code == 200 and len(decoded.json()["probs"]) == 2
    for operation, body in (("encode", {"num_samples": 2}), ("elbo", {}), ("iwae", {"k": 5})):
        response = client.post(f"/models/m2/{operation}", json={"images": images, "seed": 0, **body})
        assert response.status_code == 200, (operation, response.text)


def test_a_background_companion_of_m2_learns_from_unlabelled_images():
    from model.anomaly.companions import fit_companions

    config = TrainConfig.of(kind="m2", classes=(3, 7), hidden=(16,), latent_features=2, batch_size=32,
                         background_epochs=1)
    companions = fit_companions(config, torch.rand(64, 1, 28, 28))
    assert set(companions) == {"background"}
    assert companions["background"].class_labels.tolist() == [3, 7]
