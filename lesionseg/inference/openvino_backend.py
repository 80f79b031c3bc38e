"""The network on the CPU through OpenVINO, with its compiled form cached on disk.

On the CPU, OpenVINO runs the MONAI networks about twice as fast as eager torch at fp32 with the same argmax
(NOTES §8).  ``OpenVINONetwork`` stands in for the torch module that :func:`lesionseg.inference.window.sliding_window`
runs on each batch of windows: it takes ``[batch, channels, i, j, k]`` (a torch tensor) and returns the logits as a
torch tensor.

Converting a torch network takes seconds to a minute (it is traced), so the compiled model is exported once per
window shape and precision to ``<model folder>/.openvino/`` (or, when that folder is read-only, to
``$XDG_CACHE_HOME/lesionseg/openvino/<model id>/``).  Each blob has a JSON key beside it: the weights' SHA-256, the
OpenVINO version, the window shape, the precision and the blob's own SHA-256.  A blob whose key does not match
(changed weights, another OpenVINO) or whose bytes do not hash to the key's value is rebuilt, never trusted.

Backend order (``--backend``): ``torch`` always runs torch; ``openvino`` and ``auto`` run OpenVINO when the
network runs on the CPU and ``openvino`` is importable; on CUDA the network always runs on torch.  When
``openvino`` is missing the run goes on with torch and says so in one line.

Threads: OpenVINO runs with torch's thread count (``torch.set_num_threads``, ``OMP_NUM_THREADS``), passed as
``INFERENCE_NUM_THREADS`` when the network is compiled or imported, so both backends use the same number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("fp32", "bf16")
CACHE_FOLDER = ".openvino"
_CACHE_FORMAT = 1
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not known; use one of {', '.join(BACKENDS)}")
    return backend


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not known; use one of {', '.join(PRECISIONS)}")
    return precision


def choose_backend(requested: str, device_type: str) -> tuple[str, str | None]:
    """The backend that runs the network, and a line to show when it is not the one asked for."""
    check_backend(requested)
    if device_type != "cpu":
        if requested == "openvino":
            return "torch", f"--backend openvino runs on the CPU only; the network runs on torch on {device_type}"
        return "torch", None
    if requested == "torch":
        return "torch", None
    if openvino_available():
        return "openvino", None
    return "torch", "openvino is not installed; the network runs on torch (pip install openvino for a faster CPU)"


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin lists BF16 among this CPU's capabilities (AVX-512 BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def user_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lesionseg" / "openvino"


def cache_folder(model_folder: Path | None, model_id: str) -> Path:
    """``<model folder>/.openvino`` when it can be written there, else a per-model folder in the user cache."""
    if model_folder is not None:
        folder = Path(model_folder) / CACHE_FOLDER
        try:
            folder.mkdir(exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    return user_cache_root() / re.sub(r"[^A-Za-z0-9._-]+", "_", model_id or "model")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class OpenVINONetwork:
    """A torch network compiled by OpenVINO for the CPU; called like the torch module on window batches."""

    def __init__(
        self,
        network: Any,
        weights_sha256: str,
        folder: Path,
        precision: str = "fp32",
        threads: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        import openvino as ov

        self.network = network  # the torch module: converted once per window shape that is not cached
        self.weights_sha256 = weights_sha256
        self.folder = Path(folder)
        self.precision = check_precision(precision)
        self.version = ov.get_version()
        self.core = ov.Core()
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision]}
        self.threads = int(threads) if threads else None  # None: torch's count when the network is compiled
        self.log = log
        self._compiled: dict[tuple[tuple[int, ...], int], Any] = {}
        self.rebuilt: list[str] = []  # blobs (re)built by this object, for tests and reports

    def paths(self, window: tuple[int, ...]) -> tuple[Path, Path]:
        name = f"network-{'x'.join(str(n) for n in window)}-{self.precision}"
        return self.folder / f"{name}.blob", self.folder / f"{name}.json"

    def key(self, window: tuple[int, ...]) -> dict[str, Any]:
        return {
            "format": _CACHE_FORMAT,
            "weights_sha256": self.weights_sha256,
            "openvino": self.version,
            "window": list(window),
            "precision": self.precision,
        }

    def thread_count(self) -> int:
        """The CPU threads OpenVINO runs with: those given, else torch's (``torch.set_num_threads``, or
        ``OMP_NUM_THREADS`` at start), so that both backends use the same number. OpenVINO's own default is
        every core, which ignores what the user or the worker set."""
        if self.threads:
            return self.threads
        import torch

        return max(1, int(torch.get_num_threads()))

    def compile_config(self) -> dict[str, Any]:
        return {**self.config, "INFERENCE_NUM_THREADS": self.thread_count()}

    def _cached(self, window: tuple[int, ...]) -> Any | None:
        blob_path, key_path = self.paths(window)
        try:
            recorded = json.loads(key_path.read_text(encoding="utf-8"))
            blob = blob_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or recorded.pop("blob_sha256", None) != _sha256(blob):
            return None
        if recorded != self.key(window):
            return None
        try:
            return self.core.import_model(io.BytesIO(blob), "CPU", self.compile_config())
        except Exception:  # noqa: BLE001 - a blob OpenVINO cannot read is rebuilt like any other bad cache
            return None

    def _build(self, window: tuple[int, ...]) -> Any:
        import openvino as ov
        import torch

        if self.log:
            self.log(f"compiling the network for OpenVINO ({list(window)} windows, {self.precision}); cached after")
        example = torch.zeros((1, *window), dtype=torch.float32)
        with torch.no_grad(), warnings.catch_warnings():
            # The conversion traces the network; torch's tracer warnings say nothing a user can act on.
            warnings.simplefilter("ignore")
            converted = ov.convert_model(self.network, example_input=example, input=[ov.PartialShape([-1, *window])])
        compiled = self.core.compile_model(converted, "CPU", self.compile_config())
        stream = io.BytesIO()
        compiled.export_model(stream)
        blob = stream.getvalue()
        blob_path, key_path = self.paths(window)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # The blob first, then its key: a key never names bytes that are not there yet.
            _write_atomic(blob_path, blob)
            key = dict(self.key(window), blob_sha256=_sha256(blob))
            _write_atomic(key_path, json.dumps(key, indent=1).encode("utf-8"))
        except OSError as error:
            if self.log:
                self.log(f"could not cache the compiled network in {self.folder} ({error}); it is compiled each run")
        self.rebuilt.append(blob_path.name)
        return compiled

    def compiled(self, window: tuple[int, ...]) -> Any:
        """The network compiled for ``window`` at the current thread count (a changed count compiles again)."""
        key = (window, self.thread_count())
        if key not in self._compiled:
            self._compiled[key] = self._cached(window) or self._build(window)
        return self._compiled[key]

    def __call__(self, batch: Any) -> Any:
        import torch

        window = tuple(int(n) for n in batch.shape[1:])
        inputs = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.compiled(window)(inputs)  # share_outputs=False: the array is already this call's own copy
        return torch.from_numpy(result[0])


def openvino_network(
    network: Any,
    weights_sha256: str,
    model_folder: Path | None,
    model_id: str,
    precision: str = "fp32",
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> OpenVINONetwork:
    return OpenVINONetwork(network, weights_sha256, cache_folder(model_folder, model_id), precision, threads, log)
