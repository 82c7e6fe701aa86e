"""deploy/: every manifest is valid against the Kubernetes and KServe schemas, offline, and agrees
with what it runs: the app's routes, the service's settings, the Dockerfile and docker-compose.yml.

Core kinds are checked with kubernetes-validate (it bundles the API's JSON schemas) in strict mode,
so an unknown or misspelt field fails as it does on `kubectl apply`; the InferenceService with the
schema of KServe's CRD vendored in deploy/schemas/kserve (README.md there says from where). No
cluster is involved: what only a cluster would show (scheduling, storage classes, the KServe
controller's defaults) is not tested here.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KSERVE_SCHEMA = DEPLOY / "schemas" / "kserve" / "inferenceservice-v1beta1.schema.json"
SECRET_EXAMPLE = DEPLOY / "secret.example.yaml"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.glob("*/kustomization.yaml"))
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml")
                   if p.name not in ("kustomization.yaml", "kustomizeconfig.yaml") and "schemas" not in p.parts)
# The oldest Kubernetes the manifests promise to work on, and the newest the validator bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
SERVING_KINDS = ("Deployment", "InferenceService")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def documents(kind: str) -> list[dict]:
    found = [doc for path in MANIFESTS for doc in load_documents(path) if doc["kind"] == kind]
    assert found, f"expected a {kind} under deploy/"
    return found


def kustomization_resources(directory: Path) -> list[Path]:
    """The manifest files `kubectl apply -k directory` applies, following directory resources."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / 'kustomization.yaml'} lists {entry}, which does not exist"
        files += kustomization_resources(path) if path.is_dir() else [path]
    for entry in kustomization.get("configurations", []):
        assert (directory / entry).is_file(), f"{directory / 'kustomization.yaml'} lists {entry}, which does not exist"
    return files


def pod_spec(doc: dict) -> dict:
    """The pod template's spec; KServe's predictor inlines a PodSpec beside its own fields."""
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]
    return doc["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def closed(schema):
    """The schema with unknown fields rejected wherever it lists properties, as the API server does
    under kubectl's default --validate=strict (it would otherwise prune them without a word)."""
    if isinstance(schema, list):
        return [closed(sub) for sub in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) if key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf") else value
           for key, value in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: closed(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def kserve_validator() -> jsonschema.Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    schema = closed(schema)
    # A CRD's schema leaves metadata to the API server; check it as the server would, as ObjectMeta.
    definitions = json.loads(resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{KUBERNETES_VERSIONS[-1]}.0-local-strict/_definitions.json").read_text())
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict, kserve_validator: jsonschema.Validator, version: str) -> list[str]:
    """Every schema violation of one object, as 'kind/name: path: message'."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "InferenceService":
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1", f"{where}: the vendored schema is v1beta1's"
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in kserve_validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message} (Kubernetes {e.version})"]
    return []


# --- the app, the settings and the images the manifests refer to ----------------------------------

@pytest.fixture(scope="module")
def is_get_route(tmp_path_factory) -> Callable[[str], bool]:
    """Whether `GET path` reaches a route of the app, as the app's own router decides (building the
    app loads no model)."""
    from starlette.routing import Match

    from service.app import create_app

    app = create_app(Settings(model_dir=tmp_path_factory.mktemp("no-models")))

    def matches(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    return matches


def dockerfile_stage(target: str) -> str:
    """The lines of one stage of the Dockerfile, from its FROM to the next."""
    stages = re.split(r"^(?=FROM )", (ROOT / "Dockerfile").read_text(), flags=re.M)
    matching = [s for s in stages if re.match(rf"FROM \S+ AS {target}\s*$", s.splitlines()[0])]
    assert len(matching) == 1, f"expected one Dockerfile stage named {target}, found {len(matching)}"
    return matching[0]


def image_user(target: str) -> int:
    users = re.findall(r"^USER (\d+)(?::\d+)?\s*$", dockerfile_stage(target), flags=re.M)
    assert users, f"expected a numeric USER in the Dockerfile's {target} stage"
    return int(users[-1])


def compose_images() -> dict[str, str]:
    """The image docker-compose.yml tags for each Dockerfile target, with its variables' defaults."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {}
    for service in compose["services"].values():
        if "build" in service:
            images[service["build"]["target"]] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", service["image"])
    return images


def train_once_variables() -> set[str]:
    """The VAE_* variables the train image's entry point (docker/train-once.sh) reads."""
    return set(re.findall(r"\$\{(VAE_\w+)", (ROOT / "docker" / "train-once.sh").read_text()))


# --- the checks: each returns what is wrong, so that a broken copy can be shown to fail -----------

def probe_problems(spec: dict, is_route: Callable[[str], bool]) -> list[str]:
    problems = []
    for container in spec["containers"]:
        ports = {p["containerPort"] for p in container.get("ports", [])}
        names = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        missing = {"livenessProbe", "readinessProbe"} - container.keys()
        if missing:
            problems.append(f"{container['name']}: no {', '.join(sorted(missing))}")
        for probe in PROBES:
            if probe not in container:
                continue
            get = container[probe].get("httpGet")
            if get is None:
                problems.append(f"{container['name']}.{probe}: expected an httpGet probe")
                continue
            if not is_route(get["path"]):
                problems.append(f"{container['name']}.{probe}: {get['path']} is not a GET route of the app")
            port = names.get(get["port"], get["port"])
            if port not in ports:
                problems.append(f"{container['name']}.{probe}: port {get['port']} is not a container port "
                                f"{sorted(ports)}")
        args = container.get("args", [])
        if "--port" in args and int(args[args.index("--port") + 1]) not in ports:
            problems.append(f"{container['name']}: serves on --port {args[args.index('--port') + 1]}, "
                            f"not on a container port {sorted(ports)}")
    return problems


def env_problems(container: dict, known: set[str]) -> list[str]:
    """VAE_* variables nothing reads, and values the settings would refuse."""
    env = env_of(container)
    problems = [f"{container['name']}: {name} is not a setting (expected one of {sorted(known)})"
                for name in env if name.startswith("VAE_") and name not in known]
    fields = {name.removeprefix("VAE_").lower(): entry["value"] for name, entry in env.items()
              if name.startswith("VAE_") and "value" in entry
              and name.removeprefix("VAE_").lower() in Settings.model_fields}
    try:
        Settings(**fields)
    except ValueError as error:  # pydantic's ValidationError
        problems.append(f"{container['name']}: the settings refuse the values given: {error}")
    return problems


def token_problems(container: dict, secret: dict) -> list[str]:
    token = env_of(container).get("VAE_API_TOKEN")
    if token is None:
        return [f"{container['name']}: no VAE_API_TOKEN"]
    ref = token.get("valueFrom", {}).get("secretKeyRef")
    if "value" in token or ref is None:
        return [f"{container['name']}: VAE_API_TOKEN must come from a secretKeyRef, not a literal value"]
    problems = []
    if (ref["name"], ref["key"]) != (secret["metadata"]["name"], next(iter(secret["stringData"]))):
        problems.append(f"{container['name']}: VAE_API_TOKEN refers to {ref['name']}/{ref['key']}, "
                        f"which the example Secret does not define")
    if ref.get("optional"):
        problems.append(f"{container['name']}: an optional token lets the server start without one")
    return problems


def security_problems(spec: dict, uid: int) -> list[str]:
    """The container's effective security context (its own settings over the pod's)."""
    problems = []
    tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in spec["containers"]:
        effective = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        expected = {"runAsNonRoot": True, "runAsUser": uid, "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False}
        problems += [f"{container['name']}: {key} is {effective.get(key)!r}, expected {value!r}"
                     for key, value in expected.items() if effective.get(key) != value]
        if effective.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{container['name']}: expected capabilities.drop [ALL]")
        if not any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container.get("volumeMounts", [])):
            problems.append(f"{container['name']}: the root file system is read-only, so /tmp needs an emptyDir")
    return problems


UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30}


def quantity(value) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * UNITS[unit]


def resource_problems(container: dict) -> list[str]:
    problems = []
    resources_ = container.get("resources", {})
    for resource in ("cpu", "memory"):
        request = resources_.get("requests", {}).get(resource)
        limit = resources_.get("limits", {}).get(resource)
        if request is None or limit is None:
            problems.append(f"{container['name']}: expected a {resource} request and limit")
        elif quantity(request) > quantity(limit):
            problems.append(f"{container['name']}: {resource} request {request} above its limit {limit}")
    return problems


def grace_problems(spec: dict) -> list[str]:
    """SIGKILL must come after the preStop pause and the service's drain."""
    grace = spec.get("terminationGracePeriodSeconds", 30)
    problems = []
    for container in spec["containers"]:
        drain = float(env_of(container).get("VAE_SHUTDOWN_TIMEOUT_S", {}).get("value",
                                                                           Settings().shutdown_timeout_s))
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = float(command[1]) if command[:1] == ["sleep"] else 0.0
        if grace <= pause + drain:
            problems.append(f"{container['name']}: terminationGracePeriodSeconds {grace} leaves no time for "
                            f"the preStop pause ({pause:g} s) and the drain ({drain:g} s)")
    return problems


# --- schemas -------------------------------------------------------------------------------------

def test_every_manifest_is_applied_by_a_kustomization_but_the_example_secret():
    applied = {path for directory in KUSTOMIZATIONS for path in kustomization_resources(directory)}
    assert applied == set(MANIFESTS) - {SECRET_EXAMPLE}
    assert {d.name for d in KUSTOMIZATIONS} == {"storage", "serve", "train", "kserve"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_against_the_schemas(path, version, kserve_validator):
    docs = load_documents(path)
    assert docs, f"{path} holds no object"
    assert [e for doc in docs for e in schema_errors(doc, kserve_validator, version)] == []


BROKEN = {
    # case: (manifest, what is done to a copy of it, what the error must name)
    "misspelt field": ("serve/deployment.yaml",
                       lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
                       "'readinessprobe' was unexpected"),
    "wrong type": ("serve/deployment.yaml", lambda d: d["spec"].update(replicas="two"), "spec.replicas"),
    "missing required field": ("serve/service.yaml", lambda d: d["spec"]["ports"][0].pop("port"),
                               "'port' is a required property"),
    "job without containers": ("train/job.yaml", lambda d: d["spec"]["template"]["spec"].pop("containers"),
                               "'containers' is a required property"),
    # KServe's custom predictor has no protocolVersion (only the framework specs do): the API server
    # would refuse it, or drop it where validation is off, and the protocol would stay v1.
    "protocolVersion on a custom predictor": ("kserve/inferenceservice.yaml",
                                              lambda d: d["spec"]["predictor"].update(protocolVersion="v2"),
                                              "'protocolVersion' was unexpected"),
    "unknown scale metric": ("kserve/inferenceservice.yaml",
                             lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"), "spec.predictor.scaleMetric"),
    "env entry without a name": ("kserve/inferenceservice.yaml",
                                 lambda d: d["spec"]["predictor"]["containers"][0]["env"][0].pop("name"),
                                 "'name' is a required property"),
    "annotation that is not a string": ("kserve/inferenceservice.yaml",
                                        lambda d: d["metadata"]["annotations"].update(replicas=3),
                                        "metadata.annotations.replicas"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_copy_fails_validation(case, kserve_validator):
    relative, breaks, expected = BROKEN[case]
    doc = copy.deepcopy(load_documents(DEPLOY / relative)[0])
    assert schema_errors(doc, kserve_validator, KUBERNETES_VERSIONS[-1]) == []
    breaks(doc)
    errors = schema_errors(doc, kserve_validator, KUBERNETES_VERSIONS[-1])
    assert any(expected in error for error in errors), errors


def test_the_vendored_kserve_schema_is_closed_where_kserve_lists_fields(kserve_validator):
    predictor = kserve_validator.schema["properties"]["spec"]["properties"]["predictor"]
    assert predictor["additionalProperties"] is False
    assert {"containers", "volumes", "minReplicas", "securityContext"} <= predictor["properties"].keys()


# --- what the manifests must agree on --------------------------------------------------------------

def serving_docs() -> list[dict]:
    return [doc for kind in SERVING_KINDS for doc in documents(kind)]


def test_probes_hit_real_routes_on_the_serving_port(is_get_route):
    assert not is_get_route("/healthz")  # the check can fail
    for doc in serving_docs():
        assert probe_problems(pod_spec(doc), is_get_route) == []


def test_probes_need_no_token(tmp_path, asgi_client):
    """The kubelet sends no Authorization header: a probe behind the token would never pass."""
    from service.app import create_app

    client = asgi_client(create_app(Settings(model_dir=tmp_path, api_token="s3cret")))
    for doc in serving_docs():
        for container in pod_spec(doc)["containers"]:
            for probe in PROBES:
                path = container[probe]["httpGet"]["path"]
                status = client.get(path).status_code
                expected = (503,) if probe == "readinessProbe" else (200,)  # no model in tmp_path
                assert status in expected, f"{doc['kind']} {probe} {path}: {status}"


def test_serving_env_names_real_settings_with_values_they_accept():
    known = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    for doc in serving_docs():
        for container in pod_spec(doc)["containers"]:
            assert env_problems(container, known) == []


def test_train_job_env_is_read_by_the_train_image():
    known = {f"VAE_{name.upper()}" for name in Settings.model_fields} | train_once_variables()
    assert "VAE_TRAIN_NAME" in known  # the parse found the script's variables
    for job in documents("Job"):
        for container in pod_spec(job)["containers"]:
            assert env_problems(container, known) == []


def test_token_comes_from_the_secret():
    secret = load_documents(SECRET_EXAMPLE)[0]
    assert "REPLACE" in next(iter(secret["stringData"].values())), "the example Secret must hold no real token"
    for doc in serving_docs():
        for container in pod_spec(doc)["containers"]:
            assert token_problems(container, secret) == []


def test_security_context_matches_the_images():
    for doc in serving_docs():
        assert security_problems(pod_spec(doc), image_user("serve")) == []
    for job in documents("Job"):
        assert security_problems(pod_spec(job), image_user("train")) == []


def test_every_container_has_requests_and_limits():
    for doc in serving_docs() + documents("Job"):
        for container in pod_spec(doc)["containers"]:
            assert resource_problems(container) == []


def test_termination_grace_outlasts_the_drain():
    for doc in serving_docs():
        assert grace_problems(pod_spec(doc)) == []


def test_images_are_the_ones_compose_builds():
    images = compose_images()
    assert images["serve"] == "vae-lab-serve:latest" and images["train"] == "vae-lab-train:latest"
    for doc in serving_docs():
        assert [c["image"] for c in pod_spec(doc)["containers"]] == [images["serve"]]
    for job in documents("Job"):
        containers = pod_spec(job)["containers"]
        assert [c["image"] for c in containers] == [images["train"]]
        # The entry point the train stage installs.
        assert re.search(rf"COPY \S+ /usr/local/bin/{containers[0]['command'][0]}\s*$",
                         dockerfile_stage("train"), flags=re.M)


def test_the_container_port_is_the_one_the_serve_image_exposes():
    exposed = {int(p) for p in re.findall(r"^EXPOSE (\d+)", dockerfile_stage("serve"), flags=re.M)}
    for doc in serving_docs():
        assert {p["containerPort"] for c in pod_spec(doc)["containers"] for p in c["ports"]} == exposed


def test_the_model_directory_is_the_pvc_mounted_read_only_for_serving():
    claims = {pvc["metadata"]["name"] for pvc in documents("PersistentVolumeClaim")}
    for doc in serving_docs() + documents("Job"):
        spec = pod_spec(doc)
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        # The server reads VAE_MODEL_DIR; the train image writes to /runs/$VAE_TRAIN_NAME.
        model_dir = env_of(container).get("VAE_MODEL_DIR", {}).get("value", "/runs")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == model_dir]
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        assert claim is not None and claim["claimName"] in claims, f"{doc['kind']}: {model_dir} is not the PVC"
        serving = doc["kind"] in SERVING_KINDS
        assert bool(mount.get("readOnly")) == serving and bool(claim.get("readOnly")) == serving, doc["kind"]


def test_service_reaches_the_deployments_pods():
    (deployment,) = documents("Deployment")
    (service,) = documents("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p.get("name"): p["containerPort"] for c in pod_spec(deployment)["containers"] for p in c["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_inference_service_is_a_custom_predictor_speaking_v2():
    (isvc,) = documents("InferenceService")
    (container,) = pod_spec(isvc)["containers"]
    # KServe's controller takes the container named kserve-container as the predictor, and reads a
    # custom predictor's protocol from its PROTOCOL variable (v1 when absent).
    assert container["name"] == "kserve-container"
    assert env_of(container)["PROTOCOL"]["value"] == "v2"
    assert {p.startswith("/v2/") for probe in PROBES for p in [container[probe]["httpGet"]["path"]]} == {True}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("Standard", "RawDeployment")


BROKEN_PROPERTIES = {
    # (what is done to a copy of the Deployment's pod spec, the check that must then complain)
    "probe on a route the app lacks": (
        lambda s: s["containers"][0]["readinessProbe"]["httpGet"].update(path="/healthz"),
        lambda s, ctx: probe_problems(s, ctx["is_route"])),
    "probe on another port": (lambda s: s["containers"][0]["livenessProbe"]["httpGet"].update(port=8080),
                              lambda s, ctx: probe_problems(s, ctx["is_route"])),
    "server on another port": (lambda s: s["containers"][0].update(args=["vae", "serve", "--port", "9000"]),
                               lambda s, ctx: probe_problems(s, ctx["is_route"])),
    "no readiness probe": (lambda s: s["containers"][0].pop("readinessProbe"),
                           lambda s, ctx: probe_problems(s, ctx["is_route"])),
    "misspelt setting": (lambda s: s["containers"][0]["env"].append({"name": "VAE_MAX_BATCH", "value": "8"}),
                         lambda s, ctx: env_problems(s["containers"][0], ctx["known"])),
    "value the settings refuse": (lambda s: s["containers"][0]["env"].append({"name": "VAE_DEVICE", "value": "gpu"}),
                                  lambda s, ctx: env_problems(s["containers"][0], ctx["known"])),
    "literal token": (lambda s: env_of(s["containers"][0])["VAE_API_TOKEN"].update(value="hunter2"),
                      lambda s, ctx: token_problems(s["containers"][0], ctx["secret"])),
    "root user": (lambda s: s["containers"][0]["securityContext"].update(runAsUser=0),
                  lambda s, ctx: security_problems(s, 10001)),
    "writable root file system": (lambda s: s["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
                                  lambda s, ctx: security_problems(s, 10001)),
    "no memory limit": (lambda s: s["containers"][0]["resources"]["limits"].pop("memory"),
                        lambda s, ctx: resource_problems(s["containers"][0])),
    "grace shorter than the drain": (lambda s: s.update(terminationGracePeriodSeconds=30),
                                     lambda s, ctx: grace_problems(s)),
}


@pytest.mark.parametrize("case", BROKEN_PROPERTIES)
def test_a_broken_copy_fails_the_property_checks(case, is_get_route):
    breaks, check = BROKEN_PROPERTIES[case]
    context = {"is_route": is_get_route, "known": {f"VAE_{name.upper()}" for name in Settings.model_fields},
               "secret": load_documents(SECRET_EXAMPLE)[0]}
    spec = copy.deepcopy(pod_spec(documents("Deployment")[0]))
    assert check(spec, context) == []
    breaks(spec)
    assert check(spec, context) != []
