"""Properties of the Gumbel-softmax categorical latent (`--kind categorical`)."""

import json
import math

import pytest
import torch
from torch.distributions import RelaxedOneHotCategorical

from model import TrainConfig, iwae_bound, load_checkpoint
from model.kinds.categorical import CategoricalVAE
from model.core.schedules import exponential_temperature
from model.core.gumbel import one_hot_sample, relaxed_one_hot
from model.runs.checkpoint import CALIBRATION, CLASSIFIER, CONFIG, EVALUATION, MANIFEST, METRICS, WEIGHTS
from model.cli.main import main
from model.data.loading import load_data
from model.core.noise import RowwiseNoise
from model.core.schedules import Progress
from model.runs.train import train
from model.kinds.base import LatentModel

TINY = dict(kind="categorical", categorical_variables=3, categories=4, gaussian_features=2, hidden=(32,),
            epochs=2, batch_size=128, train_subset=600, eval_k=10, calibration_k=5, seed=11,
            temperature=2.0, temperature_min=0.5, temperature_rate=0.05)


def test_relaxed_samples_lie_on_the_simplex_and_approach_one_hot_as_the_temperature_falls():
    torch.manual_seed(0)
    logits = torch.randn(256, 3, 5)
    peaks = []
    for temperature in (5.0, 1.0, 0.3, 0.01):
        c = relaxed_one_hot(logits, temperature)
        assert c.shape == (256, 3, 5)
        assert (c >= 0).all() and torch.allclose(c.sum(-1), torch.ones(256, 3), atol=1e-5)
        peaks.append(c.max(-1).values.mean().item())
    assert peaks == sorted(peaks), peaks
    assert peaks[-1] > 0.99 and peaks[0] < 0.5


def test_relaxed_sample_is_the_one_torch_distributions_draws():
    logits = torch.randn(8, 2, 6)
    torch.manual_seed(3)
    ours = relaxed_one_hot(logits, 0.7)
    torch.manual_seed(3)
    theirs = RelaxedOneHotCategorical(torch.tensor(0.7), logits=logits).rsample()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_straight_through_samples_are_one_hot_and_carry_gradients():
    logits = torch.randn(32, 4, 3, requires_grad=True)
    c = relaxed_one_hot(logits, 0.5, straight_through=True)
    assert set(c.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(c.detach().sum(-1), torch.ones(32, 4))
    (c * torch.randn(3)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gumbel_max_samples_follow_the_category_probabilities():
    torch.manual_seed(1)
    probs = torch.tensor([[[0.1, 0.2, 0.7]]])
    c = one_hot_sample(probs.log(), (20_000,))  # (K, 1, 1, 3)
    assert torch.allclose(c.mean(0).squeeze(), probs.squeeze(), atol=0.015)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CategoricalVAE((1, 28, 28), variables=3, categories=4, gaussian_features=0, hidden=(16,))


def test_categorical_kl_is_the_closed_form(model):
    x = torch.rand(6, 1, 28, 28)
    qc, _ = model.posterior(x)
    q = qc.probs  # (B, N, C)
    closed_form = (q * (q.log() + math.log(4))).sum((-1, -2))  # KL(q || uniform), summed over variables
    for temperature in (None, 0.5):  # the KL does not depend on how c is sampled
        assert torch.allclose(model.elbo_terms(x, temperature=temperature).kl, closed_form, atol=1e-5)
    # ... and agrees with a Monte Carlo estimate E_q[log q(c) − log p(c)] within 3 standard errors.
    torch.manual_seed(2)
    c = one_hot_sample(qc.logits, (20_000,))
    mc = (qc.log_prob(c) + math.log(4)).sum(-1)  # (K, B)
    assert ((mc.mean(0) - closed_form).abs() < 3 * mc.std(0) / math.sqrt(20_000) + 1e-3).all()


def test_iwae_with_discrete_samples_converges_to_the_exact_log_likelihood():
    torch.manual_seed(4)
    model = CategoricalVAE((1, 28, 28), variables=1, categories=4, hidden=(16,))
    x = torch.rand(5, 1, 28, 28).round()
    # One variable of four categories: log p(x) = log Σ_c p(c) p(x|c), exactly, by enumeration.
    codes = torch.eye(4)
    log_px_c = model.observation_model(codes).log_prob(x.unsqueeze(1)).flatten(2).sum(-1)  # (B, 4)
    exact = torch.logsumexp(log_px_c - math.log(4), dim=1)
    q = model.posterior(x)[0].probs.squeeze(1)  # (B, 4)
    exact_elbo = (q * (log_px_c - math.log(4) - q.log())).sum(1)  # E_q[log p(x, c) − log q(c|x)]
    with torch.no_grad():
        l_k = iwae_bound(model, x, 4000)
    assert torch.allclose(l_k, exact, atol=0.05)
    assert (exact_elbo <= exact + 1e-4).all() and (l_k >= exact_elbo - 0.01).all()


def test_temperature_schedule_is_a_function_of_the_step_with_a_floor():
    tau = exponential_temperature(2.0, 0.5, 1e-3)
    values = [tau(Progress(epoch=0.0, step=s)) for s in (0, 100, 1000, 10_000, 100_000)]
    assert values[0] == 2.0 and values[-1] == 0.5
    assert values == sorted(values, reverse=True)
    assert tau(Progress(epoch=0.0, step=100)) == tau(Progress(epoch=3.0, step=100))  # stateless


def test_decode_names_the_expected_layout(model):
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        model.decode(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="simplex"):
        model.decode(torch.full((2, 12), 0.5))
    c = torch.eye(4)[torch.tensor([[0, 1, 2], [3, 3, 3]])].flatten(1)  # (2, 12) one-hot blocks
    assert model.decode(c).shape == (2, 1, 28, 28)


def test_seeded_noise_makes_sampling_and_encoding_reproducible():
    torch.manual_seed(0)
    model = CategoricalVAE((1, 28, 28), variables=3, categories=4, gaussian_features=2, hidden=(16,))
    x = torch.rand(3, 1, 28, 28)
    a = model.sample(3, noise=RowwiseNoise([5], [3]))
    b = model.sample(3, noise=RowwiseNoise([5], [3]))
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["probs"], b["probs"])
    za = model.encode(x, 4, noise=RowwiseNoise([1, 2], [2, 1]))["z"]
    zb = model.encode(x[2:], 4, noise=RowwiseNoise([2], [1]))["z"]
    # A request's samples do not depend on its batch mates (up to float rounding of batched matmuls).
    assert torch.allclose(za[:, 2:], zb, atol=1e-5)
    assert torch.equal(model.log_weights(x, 7, RowwiseNoise([9], [3])), model.log_weights(x, 7, RowwiseNoise([9], [3])))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = TrainConfig.of(**TINY)
    return train(config, tmp_path_factory.mktemp("runs") / "categorical", data=load_data(config), progress=False)


def test_tiny_run_is_a_complete_checkpoint_that_answers_every_operation(run):
    for name in (CONFIG, WEIGHTS, METRICS, EVALUATION, CLASSIFIER, CALIBRATION, MANIFEST):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run)
    model = checkpoint.model
    assert model.kind == "categorical" and checkpoint.manifest["kind"] == "categorical"
    assert model.describe()["latent_features"] == 3 * 4 + 2
    x = torch.rand(4, 1, 28, 28)
    encoded = model.encode(x, num_samples=2)
    assert encoded["probs"].shape == (4, 3, 4) and torch.allclose(encoded["probs"].sum(-1), torch.ones(4, 3))
    assert encoded["mu"].shape == encoded["sigma"].shape == (4, 2)
    assert encoded["z"].shape == (2, 4, 14)
    assert model.decode(encoded["z"][0]).shape == (4, 1, 28, 28)
    sampled = model.sample(5)
    assert sampled["z"].shape == (5, 14) and ((sampled["probs"] >= 0) & (sampled["probs"] <= 1)).all()
    assert model.elbo_terms(x).elbo.shape == (4,)
    assert iwae_bound(model, x, 10).shape == (4,)
    assert model.reconstruct(x).shape == (4, 1, 28, 28)
    probs = checkpoint.classifier(model.features(x))  # classify: the latent-feature classifier
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert isinstance(model, LatentModel)  # the face the service needs: encode, decode, sample, elbo, ...


def test_temperature_is_annealed_and_recorded(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    temperatures = [line["temperature"] for line in lines]
    assert temperatures[0] < TINY["temperature"] and temperatures == sorted(temperatures, reverse=True)
    assert all(t >= TINY["temperature_min"] for t in temperatures)


def test_cli_trains_with_straight_through_samples(tmp_path):
    code = main(["train", "--kind", "categorical", "--categorical-variables", "2", "--categories", "3",
                 "--straight-through", "--hidden", "16", "--epochs", "1", "--train-subset", "200",
                 "--eval-k", "2", "--calibration-k", "2", "--quiet", "--out", str(tmp_path / "st")])
    assert code == 0
    assert TrainConfig.load(tmp_path / "st" / "config.json").optim.straight_through is True


def test_invalid_categorical_settings_are_named():
    with pytest.raises(ValueError, match="categories: expected >= 2, got 1"):
        TrainConfig.of(kind="categorical", categories=1)
    with pytest.raises(ValueError, match="temperature_min"):
        TrainConfig.of(kind="categorical", temperature=0.5, temperature_min=1.0)


def test_kind_plots_draw_codes_and_usage(run, tmp_path):
    from model.analysis.kind_plots import KIND_PLOTS

    checkpoint = load_checkpoint(run)
    test = load_data(checkpoint.config).test
    paths = KIND_PLOTS["categorical"](checkpoint.model, checkpoint.config, test, tmp_path)
    assert [p.name for p in paths] == ["category_codes.png", "category_usage.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_the_service_serves_the_categorical_kind(run, asgi_client):
    pytest.importorskip("fastapi")
    from service.app import create_app
    from service.settings import Settings

    client = asgi_client(create_app(Settings(model_dir=run.parent, max_wait_ms=0)))
    detail = client.get("/models/categorical").json()
    assert detail["kind"] == "categorical" and detail["describe"]["variables"] == 3
    assert detail["latent_features"] == 14
    images = torch.rand(2, 784).tolist()
    encoded = client.post("/models/categorical/encode", json={"images": images, "num_samples": 2, "seed": 1}).json()
    assert torch.allclose(torch.tensor(encoded["probs"]).sum(-1), torch.ones(2, 3), atol=1e-5)
    z = torch.tensor(encoded["z"])  # (B, S, 14)
    decoded = client.post("/models/categorical/decode", json={"z": z[:, 0].tolist()})
    assert decoded.status_code == 200 and len(decoded.json()["probs"][0]) == 784
    off_simplex = client.post("/models/categorical/decode", json={"z": [[0.5] * 14]})
    assert off_simplex.status_code in (400, 422) and "simplex" in off_simplex.text
    again = client.post("/models/categorical/sample", json={"n": 3, "seed": 4}).json()
    assert again == client.post("/models/categorical/sample", json={"n": 3, "seed": 4}).json()
    for operation, body in (("elbo", {"seed": 0}), ("iwae", {"k": 5, "seed": 0}), ("classify", {})):
        response = client.post(f"/models/categorical/{operation}", json={"images": images, **body})
        assert response.status_code == 200, (operation, response.text)
