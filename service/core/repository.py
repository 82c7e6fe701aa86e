"""The live model repository: the model directory watched, and models added, replaced and removed while serving.

Layout: `runs/<name>/` is a model. It is either one run directory (served as version "1", as it
always was) or a folder of versions `runs/<name>/<n>/`, each a run directory, `n` a positive
integer written without leading zeros (as Triton names versions; other subdirectories are
ignored). A folder holding a `checkpoint.json` or `config.json` of its own is a run directory,
whatever its subdirectories.

Every poll compares each run directory's `fingerprint` (a stat of the directory and of each of its
files, and the manifest's bytes: no weights are read) with the one its served copy was loaded from.
A directory that changed is loaded and warmed up beside the copy being served, in the repository's
own thread, and replaces it only once ready; so requests never wait for a load and never reach a
half-loaded model. A directory that cannot be loaded (its manifest absent, a file missing or not
matching the manifest's SHA-256: a copy still under way) leaves the old copy serving, and the
reason is reported (`ServedModel.notes`, the repository index); it is tried again once its files
change. A load whose directory changed while it ran is thrown away and tried again at the next poll.

A model or version whose directory vanished is removed only when it is still missing at the next
poll: moving the old directory aside and the new one in is two renames, and a poll may fall between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from model.runs.checkpoint import CONFIG, MANIFEST
from service.core.errors import ModelNotFoundError, ServiceError
from service.core.metrics import Metrics
from service.core.registry import (
    SINGLE_VERSION, ModelEntry, Registry, ServedModel, Snapshot, WarmUp, load_entry, run_directories, version_order,
)
from service.settings import Settings

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"[1-9][0-9]*")
MISSING_POLLS_BEFORE_REMOVAL = 2  # consecutive polls a served directory must be missing before it is removed

# Model states of the repository index, as Triton's model repository extension names them.
READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"

Fingerprint = tuple


class LoadFailedError(ServiceError):
    """POST /v2/repository/models/{name}/load found the model's files but could not serve them all."""

    status = 400


def fingerprint(run_dir: Path) -> Fingerprint | None:
    """What changes whenever a run directory's content may have: cheap, reads no weights.

    The directory's device and inode (a directory renamed into place is another inode), each file's
    name, size, inode and change time (ctime: set by every write, and unlike the modification time never
    copied by `cp -p`), and the manifest's bytes. None when the directory is gone.
    """
    try:
        stat = run_dir.stat()
        files = []
        with os.scandir(run_dir) as entries:
            for entry in entries:
                if entry.is_file():
                    s = entry.stat()
                    files.append((entry.name, s.st_size, s.st_ino, s.st_ctime_ns, s.st_mtime_ns))
        manifest = (run_dir / MANIFEST).read_bytes() if (run_dir / MANIFEST).is_file() else None
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (stat.st_dev, stat.st_ino, tuple(sorted(files)), manifest)


def versions_on_disk(model_dir: Path) -> dict[str, Path]:
    """{version: run directory} of one model folder: its numbered subdirectories, or itself as "1"."""
    if not (model_dir / MANIFEST).exists() and not (model_dir / CONFIG).exists():
        numbered = {p.name: p for p in model_dir.iterdir() if VERSION_NAME.fullmatch(p.name) and p.is_dir()}
        if numbered:
            return dict(sorted(numbered.items(), key=lambda item: version_order(item[0])))
    return {SINGLE_VERSION: model_dir}


def scan(root: Path) -> dict[str, dict[str, Path]]:
    """Every model under `root` and its versions' run directories (a folder vanishing meanwhile is left out)."""
    found = {}
    for path in run_directories(root):
        try:
            found[path.name] = versions_on_disk(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def _same_entries(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


class ModelRepository:
    """Finds the models under `settings.model_dir`, loads them and keeps `registry` in step with the disk.

    `poll`, `load` and `unload` block (they load models): call them in `executor`, as `watch` and the
    `*_now` coroutines do. They take one lock, so only one of them changes the registry at a time.

    Args:
        warm_up: runs one operation of a loaded model on a synthetic input (`Inference.warm_up`).
        after_change: awaited on the event loop after the registry changed (retires replaced batchers).
    """

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics, warm_up: WarmUp,
                 after_change: Callable[[], Awaitable[None]] | None = None):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.warm_up = warm_up
        self.after_change = after_change
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="repository")
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._unloaded: set[str] = set()  # stay unloaded across polls until loaded again
        self._missing: dict[tuple[str, str | None], int] = {}  # (name, version or None) -> polls found missing
        # (name, version) -> (fingerprint, entry) of the last load that failed: not retried until the files change
        self._failed: dict[tuple[str, str], tuple[Fingerprint, ModelEntry]] = {}
        # (name, version) being loaded now; replaced, never mutated, as the event loop reads it (`index`)
        self._loading: frozenset[tuple[str, str]] = frozenset()

    # --- polling ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Bring the registry in step with the model directory (blocking)."""
        with self._lock:
            root = self.settings.model_dir
            problem = None
            if self.settings.device == "cuda" and not torch.cuda.is_available():
                problem = "VAE_DEVICE is cuda, but torch finds no CUDA device (use cpu or auto)"
            elif not root.is_dir():
                problem = f"the model directory {root} does not exist (set VAE_MODEL_DIR or --model-dir)"
            if problem is not None:
                if problem != self.registry.problem:
                    log.error(problem)
                self.registry.problem = problem
                self.registry.loaded = True
                return
            disk = scan(root)
            self.registry.problem = None if disk else (
                f"the model directory {root} holds no run directories (train one with `vae train --out {root}/NAME`)")
            if not disk and not self.registry.loaded:
                log.error(self.registry.problem)
            for name in sorted(set(disk) | set(self.registry.snapshot.served)):
                if self.stopping.is_set():
                    break
                self._sync(name, disk.get(name))
            self.registry.loaded = True
            self.metrics.repository_polls.inc()

    def _sync(self, name: str, on_disk: dict[str, Path] | None, force: bool = False) -> None:
        """Serve what `on_disk` (None: nothing) holds for `name`, keeping every ready copy until its successor is."""
        current = self.registry.snapshot.served.get(name)
        if on_disk is None:
            if current is not None and self._still_missing(name, None):
                self._forget(name)
                self._publish(name, None)
                self.metrics.reloads.labels(name, "removed").inc()
                log.info("model %s removed: its directory is gone", name)
            return
        self._missing.pop((name, None), None)
        if name in self._unloaded:
            if current is None or not current.unloaded:
                self._publish(name, ServedModel.unloaded_model(name, self.settings.model_dir / name))
            return
        served = dict(current.versions) if current is not None else {}
        versions, notes = {}, {}
        for version, path in on_disk.items():
            self._missing.pop((name, version), None)
            entry, note = self._version(name, version, path, served.get(version), force)
            if entry is not None:
                versions[version] = entry
            if note is not None:
                notes[version] = note
        for version, old in served.items():  # versions no longer on disk
            if version not in on_disk and not self._still_missing(name, version):
                versions[version] = old
            elif version not in on_disk:
                self._failed.pop((name, version), None)
                self.metrics.reloads.labels(name, "removed").inc()
                log.info("model %s version %s removed: its directory is gone", name, version)
        model = ServedModel.of(name, versions, notes) if versions else None
        unchanged = (model is not None and current is not None and not current.unloaded
                     and _same_entries(model.versions, served) and dict(model.notes) == dict(current.notes))
        if not unchanged:
            self._publish(name, model)

    def _version(self, name: str, version: str, path: Path, old: ModelEntry | None,
                 force: bool) -> tuple[ModelEntry | None, str | None]:
        """The entry to serve as `version` of `name` from `path`, and why newer files are not served, if they are not."""
        seen = fingerprint(path)
        if seen is None:  # vanished since the scan
            return old, None
        if old is not None and old.fingerprint == seen and (old.ready or not force):
            return old, None
        key = (name, version)
        failed = self._failed.get(key)
        if failed is not None and failed[0] == seen and not force:
            entry = failed[1]  # these very files failed before
        else:
            self._loading = self._loading | {key}
            try:
                entry = load_entry(name, version, path, self.settings, self.warm_up, seen)
            finally:
                self._loading = self._loading - {key}
            if entry.ready and fingerprint(path) != seen:
                entry.ready, entry.checkpoint = False, None
                entry.error = f"{path}: its files changed while it was loading; it is loaded again at the next poll"
                log.warning("model %s: %s", name, entry.error)
                self._failed.pop(key, None)
            elif not entry.ready:
                self._failed[key] = (seen, entry)
                self.metrics.reloads.labels(name, "failed").inc()
            else:
                self._failed.pop(key, None)
                self.metrics.reloads.labels(name, "loaded").inc()
                if old is not None:
                    log.info("model %s version %s replaced by the copy now in %s", name, version, path)
        if entry.ready or old is None or not old.ready:
            return entry, None
        return old, f"the files now in {path} are not served ({entry.error}); the copy loaded before still is"

    def _still_missing(self, name: str, version: str | None) -> bool:
        """Count one more poll without the directory; True once that makes it gone for good."""
        key = (name, version)
        self._missing[key] = self._missing.get(key, 0) + 1
        if self._missing[key] < MISSING_POLLS_BEFORE_REMOVAL:
            return False
        del self._missing[key]
        return True

    def _forget(self, name: str) -> None:
        for key in [k for k in self._failed if k[0] == name]:
            del self._failed[key]

    def _publish(self, name: str, model: ServedModel | None) -> None:
        served = dict(self.registry.snapshot.served)
        if model is None:
            served.pop(name, None)
        else:
            served[name] = model
        self.registry.publish(Snapshot(dict(sorted(served.items()))))
        entries = [m for m in served.values() if not m.unloaded]
        self.metrics.models_ready.set(sum(m.default.ready for m in entries))
        self.metrics.models_failed.set(sum(not m.default.ready for m in entries))

    # --- the repository API -------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        """The folder of model `name`, or 404 naming the models there are."""
        path = self.settings.model_dir / name
        if name.startswith(".") or "/" in name or name in ("", "..") or not path.is_dir():
            known = ", ".join(sorted(self.registry.snapshot.served)) or "none"
            raise ModelNotFoundError(f"no model named {name!r} in the repository {self.settings.model_dir} "
                                     f"(no directory {path}); models: {known}")
        return path

    def load(self, name: str) -> ServedModel:
        """Serve model `name` (again): load every version whose files changed, retry failed ones (blocking).

        Raises:
            ModelNotFoundError: no folder `name` under the model directory.
            LoadFailedError: some version could not be loaded; those that could are served.
        """
        with self._lock:
            try:
                path = self._model_dir(name)
            except ModelNotFoundError:
                if name in self.registry.snapshot.served:
                    self._forget(name)
                    self._publish(name, None)
                self._unloaded.discard(name)
                raise
            self._unloaded.discard(name)  # the placeholder stays (503) until the load below publishes
            self._sync(name, versions_on_disk(path), force=True)
            model = self.registry.snapshot.served[name]
        problems = [f"version {v}: {e.error}" for v, e in model.versions.items() if not e.ready]
        problems += [f"version {v}: {note}" for v, note in model.notes.items()]
        if problems:
            raise LoadFailedError(f"model {name!r} could not be loaded entirely: " + "; ".join(problems))
        return model

    def unload(self, name: str) -> None:
        """Stop serving model `name` until it is loaded again; its weights are released (blocking)."""
        with self._lock:
            served = self.registry.snapshot.served.get(name)
            path = self._model_dir(name) if served is None else self.settings.model_dir / name  # 404 unless known
            self._unloaded.add(name)
            self._forget(name)
            if served is None or not served.unloaded:
                self._publish(name, ServedModel.unloaded_model(name, path))
                self.metrics.reloads.labels(name, "unloaded").inc()
                log.info("model %s unloaded", name)

    def index(self, ready_only: bool = False) -> list[dict]:
        """Every model in the repository, one row per version: name, version, state and reason.

        As Triton's model repository extension: models found on disk but not loaded are listed too.
        """
        rows = []
        snapshot = self.registry.snapshot
        root = self.settings.model_dir
        on_disk = scan(root) if root.is_dir() else {}
        loading = self._loading
        for name in sorted(set(on_disk) | set(snapshot.served)):
            model = snapshot.served.get(name)
            if model is None or model.unloaded:
                reason = "unloaded" if model is not None else "not loaded yet: found since the last poll"
                for version in on_disk.get(name, {None: None}):
                    state = LOADING if (name, version) in loading else UNAVAILABLE
                    rows.append({"name": name, "version": version, "state": state, "reason": reason})
                continue
            versions = dict(model.versions)
            for version in on_disk.get(name, {}):
                versions.setdefault(version, None)
            for version in sorted(versions, key=version_order):
                entry = versions[version]
                if entry is None:
                    state = LOADING if (name, version) in loading else UNAVAILABLE
                    rows.append({"name": name, "version": version, "state": state,
                                 "reason": "not loaded yet: found since the last poll"})
                elif entry.ready:
                    rows.append({"name": name, "version": version, "state": READY,
                                 "reason": model.notes.get(version, "")})
                else:
                    state = LOADING if (name, version) in loading else UNAVAILABLE
                    rows.append({"name": name, "version": version, "state": state, "reason": entry.error or ""})
        return [row for row in rows if row["state"] == READY] if ready_only else rows

    # --- on the event loop --------------------------------------------------------------------

    async def _in_thread(self, function, *args):
        result = await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        return result

    async def _changed(self) -> None:
        if self.after_change is not None:
            await self.after_change()

    async def poll_now(self) -> None:
        try:
            await self._in_thread(self.poll)
        finally:
            await self._changed()

    async def load_now(self, name: str) -> ServedModel:
        try:
            return await self._in_thread(self.load, name)
        finally:
            await self._changed()

    async def unload_now(self, name: str) -> None:
        try:
            await self._in_thread(self.unload, name)
        finally:
            await self._changed()

    async def watch(self) -> None:
        """Poll every `settings.poll_interval_s` seconds until cancelled (start it as a task in the lifespan)."""
        interval = self.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_now()
            except Exception:  # a bug, or a file system gone wrong: say so, and keep the models served
                log.exception("polling the model directory %s failed", self.settings.model_dir)

    async def close(self) -> None:
        """Stop between two loads and wait for the repository's thread (after cancelling `watch`)."""
        self.stopping.set()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
