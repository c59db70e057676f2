"""Per-face embedding time of every registry model, in one run, against dlib-resnet-v1.

Every model of `maskid.networks.registry.available_models()` runs through `maskid.networks.embedder.Embedder`, i.e.
on maskid's runtime, ONNX Runtime's CPU provider, in three settings:

  b1-t1   batch 1, 1 intra-op thread (the headline: one face at a time on one core)
  b8-t1   batch 8, 1 thread
  b1-t2   batch 1, 2 threads

Timing is interleaved: each round runs a short block of every (setting, model, runtime) in
turn, the model order rotating from round to round, so the other work on a shared machine
lands on every model alike. Reported per face: the median and p90 over all calls (a batch-8
call counts as its time / 8), and the ratio of the median to dlib-resnet-v1's median in the
same setting and run. The target checked: each pretrained model shipped as ONNX in
maskid/data/models ("bundled") within 1.5x of dlib-resnet-v1 at b1-t1; the models built on
first use (maskid-eyes-v1*: dlib's network plus a second pass of it) are listed beside them.

Where `openvino` is importable the same ONNX files also run on OpenVINO's CPU plugin, twice:
"openvino-f32" (INFERENCE_PRECISION_HINT=f32, dynamic activation quantization off) and
"openvino-default" (its defaults: bf16 on CPUs that have it, and int8-stored weights such as
EdgeFace's run with activations quantized on the fly). These rows are a reference only:
maskid runs its embedders on ONNX Runtime.

Input: real faces, every lfw10 photo of ../shared/data/demo/lfw10 detected once (maskid's
MtcnnDetector) and warped for each model with its own `Embedder.chip_transform` + `Embedder.prepare`;
random chips (normalised as each contract says) where ../shared is absent.

    python benchmarks/embed.py [--quick] [--json PATH] [--rounds N] [--no-openvino]
        [--model NAME|FILE.onnx|FILE.engine ...] [--providers CUDAExecutionProvider,...]

`--quick` (3 rounds, fewer calls) finishes in under a minute. `--model` (repeatable) measures the
named models or files instead of the whole registry, dlib-resnet-v1 always beside them; a
TensorRT engine (engines/build_engine.py) runs on TensorRT, its ratio taken to dlib-resnet-v1 on
ONNX Runtime. `--providers` picks ONNX Runtime's execution providers (default: CPU).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskid.networks.embedder import Embedder
from maskid.networks.registry import BUNDLED_DIR, DLIB_MODEL, available_models, sha256_file
from maskid.networks.tensorrt import TENSORRT_SUFFIXES
from maskid.paths import shared_data_dir

# name, batch, intra-op threads
SETTINGS = (("b1-t1", 1, 1), ("b8-t1", 8, 1), ("b1-t2", 1, 2))
HEADLINE = "b1-t1"
TARGET = 1.5  # a shipped model may cost at most this much dlib-resnet-v1's time per face
ORT = "onnxruntime"
TRT = "tensorrt"
OV_F32 = "openvino-f32"
OV_DEFAULT = "openvino-default"


@dataclass
class Runner:
    """One (runtime, model, threads): a callable batch -> descriptors and its inputs."""

    runtime: str
    model: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    inputs: np.ndarray  # N x 3 x S x S float32, as the model's contract wants
    cursor: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)  # setting -> ms per face
    rounds: dict[str, list[float]] = field(default_factory=dict)  # setting -> per-round median

    def batch(self, size: int) -> np.ndarray:
        n = len(self.inputs)
        idx = [(self.cursor + k) % n for k in range(size)]
        self.cursor = (self.cursor + size) % n
        return np.ascontiguousarray(self.inputs[idx])


# --- inputs -------------------------------------------------------------------------------


def detect_faces(n: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """(RGB image, 5 landmarks) of up to n lfw10 photos, largest face each; None without data."""
    data = shared_data_dir()
    photos = sorted((data / "demo" / "lfw10").glob("*/*.jpg")) if data is not None else []
    if not photos:
        return None
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.io.images import load_image

    # Spread over the ten people rather than the first few.
    photos = sorted(photos, key=lambda p: (sorted(p.parent.glob("*.jpg")).index(p), p.parent.name))
    det = MtcnnDetector(threads=1)
    faces = []
    for path in photos:
        image = load_image(path)
        found = det.detect(image)
        if found:
            faces.append((image, found[0].landmarks))
        if len(faces) == n:
            break
    return faces


def model_inputs(
    emb: Embedder, faces: list[tuple[np.ndarray, np.ndarray]] | None, n: int
) -> np.ndarray:
    """n input chips for `emb`: real faces warped by its contract, else random pixels."""
    if faces is not None:
        return np.concatenate(
            [emb.prepare(image, [emb.chip_transform(lm)]) for image, lm in faces[:n]]
        )
    c, s = emb.contract, emb.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (n, 3, s, s)).astype(np.float32)
    pixels -= np.asarray(c.mean, np.float32)[None, :, None, None]
    return pixels * np.float32(c.scale)


# --- runtimes -----------------------------------------------------------------------------


def openvino_runners(
    model: str, path: Path, inputs: np.ndarray, threads: list[int], reference: np.ndarray
) -> tuple[list[Runner], dict[str, float]]:
    """OpenVINO CPU on the same ONNX file (f32 hint and default precision) per thread count,
    and the lowest cosine of each precision's descriptors against ONNX Runtime's."""
    import openvino as ov

    core = ov.Core()
    f32: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    # OpenVINO's CPU plugin takes int8-stored weights (EdgeFace's Cast + Mul Linears) for
    # compressed weights and quantizes the activations on the fly, f32 hint or not (cosine to
    # ONNX Runtime ~0.998 instead of 1 - 1e-7): the f32 row turns that off.
    if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
        f32["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
    runners, agreement = [], {}
    for runtime, hint in ((OV_F32, f32), (OV_DEFAULT, {})):
        for t in threads:
            compiled = core.compile_model(
                str(path),
                "CPU",
                {**hint, "INFERENCE_NUM_THREADS": t, "PERFORMANCE_HINT": "LATENCY"},
            )
            request = compiled.create_infer_request()

            def run(batch: np.ndarray, request: Any = request) -> np.ndarray:
                request.infer({0: batch}, share_inputs=True)
                return np.asarray(request.get_output_tensor(0).data)

            runners.append(Runner(runtime, model, t, run, inputs))
        got = np.concatenate([runners[-1].run(inputs[i : i + 1]).copy() for i in range(8)])
        ref = reference[:8]
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        agreement[runtime] = float(cos.min())
    return runners, agreement


# --- timing -------------------------------------------------------------------------------


def time_block(r: Runner, setting: str, batch: int, calls: int) -> None:
    x = [r.batch(batch) for _ in range(calls)]
    times = []
    for b in x:
        t0 = time.perf_counter()
        r.run(b)
        times.append((time.perf_counter() - t0) * 1e3 / batch)
    r.samples.setdefault(setting, []).extend(times)
    r.rounds.setdefault(setting, []).append(float(np.median(times)))


def summarise(runners: list[Runner]) -> list[dict[str, Any]]:
    base: dict[tuple[str, str], Runner] = {}
    for r in runners:
        if r.model == DLIB_MODEL:
            for s, _, t in SETTINGS:
                if r.threads == t:
                    base[(r.runtime, s)] = r
    rows = []
    for r in runners:
        for s, b, t in SETTINGS:
            if r.threads != t or s not in r.samples:
                continue
            ms = np.asarray(r.samples[s])
            row: dict[str, Any] = {
                "runtime": r.runtime,
                "model": r.model,
                "setting": s,
                "batch": b,
                "threads": t,
                "calls": len(ms),
                "ms_median": float(np.median(ms)),
                "ms_p90": float(np.percentile(ms, 90)),
                "ms_mean": float(ms.mean()),
            }
            # The baseline: dlib in the same runtime and setting, else dlib on ONNX Runtime (a
            # TensorRT engine); openvino rows also get the ratio to ONNX Runtime's dlib.
            same = base.get((r.runtime, s))
            ref = same or base.get((ORT, s))
            if ref is not None:
                row["ratio_to_dlib"] = row["ms_median"] / float(np.median(ref.samples[s]))
                row["ratio_baseline"] = f"{DLIB_MODEL} on {ref.runtime}"
                per_round = np.asarray(r.rounds[s]) / np.asarray(ref.rounds[s])
                row["ratio_per_round_min_max"] = [float(per_round.min()), float(per_round.max())]
            if same is not None and r.runtime != ORT and (ORT, s) in base:
                ort_median = float(np.median(base[(ORT, s)].samples[s]))
                row["ratio_to_dlib_onnxruntime"] = row["ms_median"] / ort_median
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], models: list[str]) -> None:
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    cell = {(r["runtime"], r["model"], r["setting"]): r for r in rows}
    width = max(len(m) for m in models)
    print(
        "\nms per face, median / p90, and the median's ratio to dlib-resnet-v1 in the same "
        "runtime (tensorrt: to onnxruntime) and setting, this run"
    )
    head = f"{'runtime':<17} {'model':<{width}}"
    for s, _, _ in SETTINGS:
        head += f" | {s:^22}"
    print(head)
    print("-" * len(head))
    for rt in runtimes:
        for m in models:
            line = f"{rt:<17} {m:<{width}}"
            for s, _, _ in SETTINGS:
                r = cell.get((rt, m, s))
                if r is None:
                    line += f" | {'-':^22}"
                    continue
                ratio = r.get("ratio_to_dlib")
                rtxt = f"{ratio:5.2f}x" if ratio is not None else "     -"
                line += f" | {r['ms_median']:6.2f} / {r['ms_p90']:6.2f} {rtxt}"
            print(line)
    if len(runtimes) > 1:
        print(
            "openvino-* rows: a reference on the same ONNX files; maskid runs its embedders on "
            "ONNX Runtime."
        )


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 short rounds (under a minute)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3 quick, 20 full)")
    ap.add_argument(
        "--model",
        action="append",
        help="a registry name, .onnx or TensorRT .engine file (repeatable; default: every "
        "registry model); dlib-resnet-v1 is always measured as the baseline",
    )
    ap.add_argument("--providers", help="comma-separated ONNX Runtime providers (default: CPU)")
    ap.add_argument("--no-openvino", action="store_true", help="ONNX Runtime only")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    wanted = [m for arg in args.model for m in arg.split(",")] if args.model else available_models()
    if DLIB_MODEL not in wanted:
        wanted = [DLIB_MODEL, *wanted]
    registry = set(available_models())
    # A file is labelled by its file name (an engine is named like its ONNX model inside).
    labels = {m: m if m in registry else Path(m).name for m in wanted}
    models = list(labels.values())
    providers = args.providers.split(",") if args.providers else ["CPUExecutionProvider"]
    rounds = args.rounds or (3 if args.quick else 20)
    calls = {1: 4 if args.quick else 8, 8: 1 if args.quick else 3}  # calls per block by batch
    n_inputs = 16 if args.quick else 32
    use_ov = not args.no_openvino and importlib.util.find_spec("openvino") is not None

    faces = detect_faces(n_inputs)
    source = "lfw10 (real faces)" if faces else "random pixels (../shared/data is absent)"
    thread_counts = sorted({t for _, _, t in SETTINGS})
    runners: list[Runner] = []
    info: dict[str, Any] = {}
    for arg, m in labels.items():
        embedders = {t: Embedder(arg, threads=t, providers=providers) for t in thread_counts}
        first = embedders[thread_counts[0]]
        on_trt = first.path.suffix.lower() in TENSORRT_SUFFIXES
        inputs = model_inputs(first, faces, n_inputs)
        reference = first.embed_batch(inputs[:8])
        info[m] = {
            "file": first.path.name,
            "bytes": first.path.stat().st_size,
            "sha256_16": sha256_file(first.path)[:16],
            "input": [3, first.input_size, first.input_size],
            "dim": first.dim,
            # bundled: a pretrained ONNX shipped in maskid/data/models; built: made on first
            # use (the dlib models); file: named on the command line
            "kind": "file"
            if m not in registry
            else "bundled"
            if first.path.parent == BUNDLED_DIR
            else "built",
            "geometry": first.contract.chip_geometry,
            "color_order": first.contract.color_order,
        }
        for t, e in embedders.items():
            runners.append(Runner(TRT if on_trt else ORT, m, t, e.embed_batch, inputs))
        if use_ov and not on_trt:
            ov_runners, agreement = openvino_runners(
                m, first.path, inputs, thread_counts, reference
            )
            runners += ov_runners
            info[m]["openvino_vs_onnxruntime_min_cosine"] = agreement

    for r in runners:  # warm-up: allocations, kernel choice, both batch sizes
        for b in sorted({b for _, b, t in SETTINGS if t == r.threads}):
            r.run(r.batch(b))
            r.run(r.batch(b))

    by_key = {(r.runtime, r.model, r.threads): r for r in runners}
    runtimes = list(dict.fromkeys(r.runtime for r in runners))
    print(
        f"{len(models)} models x {len(SETTINGS)} settings x {len(runtimes)} runtimes, "
        f"{rounds} interleaved rounds, input: {source}",
        file=sys.stderr,
    )
    for k in range(rounds):
        gc.collect()
        gc.disable()
        try:
            order = models[k % len(models) :] + models[: k % len(models)]
            for s, b, t in SETTINGS:
                for m in order:
                    for rt in runtimes:
                        if (rt, m, t) in by_key:
                            time_block(by_key[(rt, m, t)], s, b, calls[b])
        finally:
            gc.enable()
        print(f"round {k + 1}/{rounds}", file=sys.stderr)

    rows = summarise(runners)
    print_table(rows, models)
    verdict = {}
    for r in rows:
        if r["runtime"] in (ORT, TRT) and r["setting"] == HEADLINE and r["model"] != DLIB_MODEL:
            verdict[r["model"]] = {
                "kind": info[r["model"]]["kind"],
                "ratio": r["ratio_to_dlib"],
                "ratio_per_round_min_max": r["ratio_per_round_min_max"],
                "within_target": r["ratio_to_dlib"] <= TARGET,
            }
    print(f"\ntarget: within {TARGET}x of {DLIB_MODEL} per face ({ORT}, {HEADLINE})")
    for m, v in verdict.items():
        lo, hi = v["ratio_per_round_min_max"]
        ok = "meets" if v["within_target"] else "MISSES"
        print(
            f"  {m:<{max(map(len, verdict))}} {v['kind']:<7} {v['ratio']:.2f}x "
            f"(rounds {lo:.2f}-{hi:.2f}) {ok}"
        )

    if args.json:
        import onnxruntime

        report: dict[str, Any] = {
            "benchmark": "embed",
            "note": (
                "ms per face through maskid.networks.embedder.Embedder on ONNX Runtime's CPU provider "
                "(maskid's runtime); openvino-* rows run the same ONNX files on OpenVINO's CPU "
                "plugin as a reference only. Ratios are to dlib-resnet-v1 in the same runtime "
                "and setting, measured in the same interleaved run."
            ),
            "input": source,
            "settings": [{"name": s, "batch": b, "threads": t} for s, b, t in SETTINGS],
            "headline": HEADLINE,
            "target_ratio": TARGET,
            "rounds": rounds,
            "quick": args.quick,
            "machine": platform.machine(),
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "loadavg_start_end": [load_start[0], os.getloadavg()[0]],
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": providers,
            "seconds": time.perf_counter() - t_start,
            "models": info,
            "results": rows,
            "target": verdict,
        }
        if use_ov:
            import openvino as ov

            report["openvino"] = ov.__version__
            report["openvino_default_precision"] = str(
                ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
            )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
