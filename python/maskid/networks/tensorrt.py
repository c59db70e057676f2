"""One inference interface over ONNX Runtime and TensorRT: `Engine.open(path).run(batch)`.

Dispatch on the file: ``.onnx`` runs on ONNX Runtime (CPU by default; CUDA when the GPU build
of onnxruntime sees a device; any providers you pass), fed through IO binding so the batch is
not copied. ``.engine``/``.plan`` runs on the C++ TensorRT executor when the core was built with
it, else on the `tensorrt` + `pycuda` Python packages, else raises `ModelError`.

Batching policy: a batch larger than the engine's maximum is split; a chunk smaller than a
fixed/minimum batch is zero-padded and the padding's outputs are dropped. Faces are never
dropped and outputs come back in input order.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import maskid._core as _core
from maskid.errors import ModelError

ONNX_SUFFIXES = (".onnx",)
TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")

# ONNX Runtime session options, chosen by measurement (ORT 1.32 on 2 cores, the shipped models,
# each session made fresh 7 times per setting; whole-process effect: benchmarks/cli.py):
# - graph optimisation ORT_ENABLE_ALL: it costs maskid-eyes-v2 ~20 ms more to create than
#   ORT_DISABLE_ALL (the fp16 weights are folded) but runs it 2x faster (9 vs 17-19 ms a face),
#   so it pays for itself from the first face; the MTCNN nets differ by < 1 ms either way.
# - no optimised-model file (`SessionOptions.optimized_model_filepath`): loading an
#   ORT_ENABLE_ALL-optimised copy saves ~20 ms of session start per process, but that copy is
#   tied to this CPU's instruction set and this ORT version (ORT warns so), and an
#   ORT_ENABLE_EXTENDED copy saves only ~10 ms: not worth a second, hardware-keyed file beside
#   every model.
# - intra-op threads: ORT's default (one per core); 1 thread is ~20% slower per face.
# - one session per model file, providers and thread count per process (`shared_session`).
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"

_SESSIONS: dict[tuple[Any, ...], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def shared_session(
    path: Path, providers: Sequence[str], threads: int | None, make: Callable[[], Any]
) -> Any:
    """The process's ONNX Runtime session for model file `path` with these providers and
    threads, made by `make()` on first use (ONNX Runtime sessions are safe to run from several
    threads). A file changed on disk (size or mtime) gets a new session."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, tuple(providers), threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = make()
        return session


class Engine(ABC):
    """A model that maps a float32 NCHW batch to float32 outputs ``(N, ...)``."""

    #: which backend runs it: "onnxruntime", "tensorrt-cpp" or "tensorrt-python"
    backend: str = ""

    def __init__(
        self,
        path: Path,
        input_name: str,
        input_shape: tuple[int, int, int],
        batch_min: int,
        batch_max: int | None,
        output_tail: tuple[int, ...] | None,
    ) -> None:
        self.path = path
        self.input_name = input_name
        self.input_shape = input_shape  # (C, H, W)
        self.batch_min = batch_min
        self.batch_max = batch_max  # None: any size in one call
        self._output_tail = output_tail  # output shape without the batch axis, when known

    @staticmethod
    def open(
        path: str | Path,
        providers: Sequence[str] | None = None,
        batch_max: int | None = None,
        threads: int | None = None,
    ) -> Engine:
        """Open an ``.onnx`` model or a serialized TensorRT engine (``.engine``/``.plan``).

        :param providers: ONNX Runtime execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``; None means CUDA when available, else CPU.
        :param batch_max: split larger batches into chunks of this size (at most the engine's own
            maximum); None uses the engine's maximum (no limit for a dynamic ONNX batch axis).
        :param threads: ONNX Runtime intra-op threads on the CPU (None: all cores).
        """
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        if batch_max is not None and batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        suffix = p.suffix.lower()
        if suffix in ONNX_SUFFIXES:
            return OnnxEngine(p, providers, batch_max, threads)
        if suffix in TENSORRT_SUFFIXES:
            check_engine_sidecar(p)
            if hasattr(_core, "TrtExecutor"):
                return TrtCoreEngine(p, batch_max)
            try:
                import pycuda  # noqa: F401
                import tensorrt  # noqa: F401
            except ImportError as exc:
                raise ModelError(
                    f"{p.name} is a TensorRT engine, but this maskid was built without the "
                    "TensorRT executor and the `tensorrt`/`pycuda` packages are not importable "
                    f"({exc.name}); install maskid[gpu] or use the .onnx model"
                ) from exc
            return TrtPythonEngine(p, batch_max)
        raise ModelError(f"unknown model type {suffix!r}: expected .onnx, .engine or .plan")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 ``(N, ...)``, any N (0 included)."""
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise TypeError(f"batch must be float32, got {batch.dtype} (convert explicitly)")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"batch must have shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {batch.shape}"
            )
        batch = np.ascontiguousarray(batch)  # no copy when already C-contiguous
        n = batch.shape[0]
        if n == 0:
            tail = self._output_tail or (0,)
            return np.zeros((0, *tail), np.float32)
        step = n if self.batch_max is None else self.batch_max
        outs = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            k = chunk.shape[0]
            if k < self.batch_min:
                padded = np.zeros((self.batch_min, *self.input_shape), np.float32)
                padded[:k] = chunk
                chunk = padded
            outs.append(self._run_chunk(chunk)[:k])
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    @abstractmethod
    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """Run one C-contiguous chunk whose size the engine accepts."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path.name!r}, backend={self.backend!r}, "
            f"input={self.input_shape}, batch=[{self.batch_min}, {self.batch_max}])"
        )


def _static_dims(shape: Sequence[Any]) -> tuple[int, ...] | None:
    return tuple(shape) if all(isinstance(d, int) and d > 0 for d in shape) else None


def _clamp_batch(requested: int | None, engine_max: int | None) -> int | None:
    if requested is None:
        return engine_max
    return requested if engine_max is None else min(requested, engine_max)


class OnnxEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] | None,
        batch_max: int | None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers is None:
            wanted = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
            providers = [*wanted, "CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ModelError(f"ONNX Runtime providers not available: {missing} (have {available})")

        def make() -> Any:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
            if threads:
                opts.intra_op_num_threads = threads
            # Spinning worker threads steal the CPU from the rest of the pipeline on small boards.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), opts, providers=list(providers))

        try:
            self.session = shared_session(path, providers, threads, make)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load ONNX model {path}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{path.name}: expected one input, got {len(inputs)}")
        inp = inputs[0]
        if inp.type != "tensor(float)" or len(inp.shape) != 4:
            raise ModelError(f"{path.name}: input must be float32 NCHW, got {inp.type} {inp.shape}")
        chw = _static_dims(inp.shape[1:])
        if chw is None or len(chw) != 3:
            raise ModelError(f"{path.name}: input C, H, W must be fixed, got {inp.shape}")
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.output_name = outputs[0].name
        super().__init__(
            path,
            inp.name,
            (chw[0], chw[1], chw[2]),
            batch_min=fixed or 1,
            batch_max=_clamp_batch(batch_max, fixed),
            output_tail=_static_dims(outputs[0].shape[1:]),
        )
        self.providers = self.session.get_providers()
        self._on_cpu = self.providers[0] == "CPUExecutionProvider"

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        binding = self.session.io_binding()
        # The OrtValue wraps the numpy buffer: no copy on CPU; one upload for a GPU provider.
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(chunk))
        if self._on_cpu and self._output_tail is not None:
            out = np.empty((chunk.shape[0], *self._output_tail), np.float32)
            binding.bind_ortvalue_output(self.output_name, ort.OrtValue.ortvalue_from_numpy(out))
            self.session.run_with_iobinding(binding)
            return out
        binding.bind_output(self.output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.get_outputs()[0].numpy(), dtype=np.float32)


class TrtCoreEngine(Engine):
    """The C++ executor: pinned buffers, own stream, GIL released while it runs."""

    backend = "tensorrt-cpp"

    def __init__(self, path: Path, batch_max: int | None) -> None:
        try:
            self.executor = _core.TrtExecutor(str(path))
        except RuntimeError as exc:
            raise ModelError(f"cannot load TensorRT engine {path}: {exc}") from exc
        c, h, w = self.executor.input_shape[1:]
        super().__init__(
            path,
            self.executor.input_name,
            (c, h, w),
            batch_min=self.executor.min_batch,
            batch_max=_clamp_batch(batch_max, self.executor.max_batch),
            output_tail=None,
        )

        # The GPU end to end (CUDA warp straight into the engine's device input) where a device
        # is visible now; the core has the pipeline whenever it has the executor.
        self.device_pipeline: Any = None
        if _core.cuda_device_count() > 0:
            self.device_pipeline = _core.TrtDevicePipeline(self.executor)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        out = self.executor.run(chunk)
        tail = tuple(d for d in self.executor.output_shape[1:])
        return out.reshape(out.shape[0], *tail) if all(d > 0 for d in tail) else out

    def run_image(
        self,
        image: np.ndarray,
        transforms: np.ndarray,
        mean: Sequence[float],
        scale: float,
        bgr_out: bool,
    ) -> np.ndarray:
        """Faces of one RGB uint8 image -> (N, D) on the GPU, with no host round trip between
        the warp and the engine (`device_pipeline` must be set)."""
        _, size, _ = self.input_shape
        out: np.ndarray = self.device_pipeline.run(
            image, transforms, size, tuple(float(v) for v in mean), float(scale), bgr_out
        )
        return out


class TrtPythonEngine(Engine):  # pragma: no cover - needs a GPU and the tensorrt wheel
    """Fallback through the `tensorrt` and `pycuda` packages (TensorRT 10 tensor API)."""

    backend = "tensorrt-python"

    def __init__(self, path: Path, batch_max: int | None) -> None:
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda
        import tensorrt as trt

        self._cuda = cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(f"cannot deserialize TensorRT engine {path} (see the log above)")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ModelError(f"{path.name}: expected one input and one output tensor")
        self.output_name = outs[0]
        shape = tuple(engine.get_tensor_shape(ins[0]))
        if shape[0] < 0:
            lo, _, hi = engine.get_tensor_profile_shape(ins[0], 0)
            bmin, bmax = int(lo[0]), int(hi[0])
        else:
            bmin = bmax = int(shape[0])
        super().__init__(
            path,
            ins[0],
            (int(shape[1]), int(shape[2]), int(shape[3])),
            batch_min=bmin,
            batch_max=_clamp_batch(batch_max, bmax),
            output_tail=None,
        )
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._context.set_input_shape(self.input_name, (bmax, *self.input_shape))
        out_shape = tuple(self._context.get_tensor_shape(self.output_name))
        self._h_in = cuda.pagelocked_empty((bmax, *self.input_shape), np.float32)
        self._h_out = cuda.pagelocked_empty(out_shape, np.float32)
        self._d_in = cuda.mem_alloc(self._h_in.nbytes)
        self._d_out = cuda.mem_alloc(self._h_out.nbytes)
        self._context.set_tensor_address(self.input_name, int(self._d_in))
        self._context.set_tensor_address(self.output_name, int(self._d_out))

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        k = chunk.shape[0]
        self._h_in[:k] = chunk
        self._context.set_input_shape(self.input_name, chunk.shape)
        self._cuda.memcpy_htod_async(self._d_in, self._h_in, self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            raise ModelError(f"TensorRT failed to run {self.path.name}")
        self._cuda.memcpy_dtoh_async(self._h_out, self._d_out, self._stream)
        self._stream.synchronize()
        return self._h_out[:k].copy()


def check_engine_sidecar(path: Path) -> None:
    """Refuse an engine whose sidecar (written by engines/build_engine.py) names another
    TensorRT version or GPU: TensorRT engines are only valid where they were built."""
    sidecar = path.with_suffix(path.suffix + ".json")
    if not sidecar.is_file():
        return
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable engine sidecar {sidecar}: {exc}") from exc
    try:
        import tensorrt

        version = tensorrt.__version__
    except ImportError:
        return  # the C++ executor reports a version mismatch itself when deserializing
    if meta.get("tensorrt") not in (None, version):
        raise ModelError(
            f"stale engine {path.name}: built with TensorRT {meta.get('tensorrt')}, this is "
            f"{version}; rebuild it with engines/build_engine.py"
        )


__all__ = ["Engine", "OnnxEngine", "TrtCoreEngine", "TrtPythonEngine", "shared_session"]
