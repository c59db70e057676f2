"""Detection benchmark on real masks: every detector in one run, same images, same rules.

Rows (each through maskid.detection.tight_crops.find_faces, the policy the product uses):
  mtcnn          MtcnnDetector, the detector shipped before issue 15 (border for tight crops,
                 ONet on the whole crop where that finds nothing)
  yunet          YunetDetector alone at 0.6, no mirror verification (dev false positives
                 <= 0.01 per face-free image; its masked found-rate falls fast above)
  yunet+mirror   YunetDetector's defaults: 0.5, candidates under 0.8 verified on the mirror image
  yunet>mtcnn    yunet, then the mtcnn row where it finds nothing
  cascade-0      CascadeDetector without its rescue: yunet+mirror, MTCNN's ONet for the points
                 (and its veto on unsure faces), ONet on the whole crop for small photos
  cascade        CascadeDetector, the product's default: cascade-0, and YuNet's weak candidates
                 (0.25 up to its threshold) kept where ONet scores them >= 0.9

Found-rate: a photo counts if a face is centred in it (box centre in the middle half, size
between a quarter and twice the photo, both eyes inside the box). Sets: M2FRED masked
(`*-1-0.png`) and unmasked (`*-0-0.png`) 128 px crops, train/rmfd masked (`masked_NN.jpg`) and
unmasked 160 px tight crops as they come, lfw10's 250 px photos, and train/lfw's 160 px crops.
Splits (maskid.evaluation.splits): thresholds were chosen on the dev halves (M2FRED even ids,
RMFD's dev ids, face-free seed 15); the table is the test halves (M2FRED odd ids, the other
RMFD ids, LFW ids outside lfw_dev, face-free seed 16).

In frames (the camera's case): every M2FRED photo pasted at a seeded place into a 640x480
face-free frame, the face 72, 96, 128 or 160 px wide, searched as a camera frame; found if a
face box overlaps the pasted square with IoU >= 0.3.

False positives: faces returned per face-free image (benchmarks/face_free.py: textures, shapes,
scrambled photos, collages of necks and clothes, masks with no face), as 160 px photos (the
tight-crop policy) and as 640x480 and 1280x720 camera frames (no border retry, as the camera).

Landmarks (M2FRED test, unmasked and masked photos of the same session):
  parity    mean cosine of dlib-resnet-v1 descriptors: our points + maskid's chip vs dlib's own
            HOG + 5-point predictor + get_face_chip (unmasked lfw10 and M2FRED; needs dlib)
  eyes/all  median distance of the masked photo's points from the same detector's points on the
            unmasked photo of the same session, in inter-ocular distances (includes the real
            movement between the two photos, the same for every row)
  rank-1    masked probes vs the unmasked photos with the default embedder and each row's
            points (a missed face counts as wrong), and the mean genuine cosine

Speed: median ms per frame (2 threads) for 1, 5 and 20 real lfw10 faces on a grey frame, as
in benchmarks/latency.py, and the share of those faces found.

Usage: python benchmarks/detection.py [--quick] [--json PATH] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_free import face_free
from maskid.detection import FaceDetector
from maskid.detection.cascade import CascadeDetector
from maskid.detection.mtcnn import MtcnnDetector
from maskid.detection.tight_crops import find_faces
from maskid.detection.yunet import YunetDetector
from maskid.evaluation.splits import identity_dirs, lfw_dev, m2fred_halves, rmfd_dev
from maskid.face import Face, iou
from maskid.io.images import load_image
from maskid.paths import shared_data_dir

THREADS = 2
FF_SIZES = ((160, 160), (640, 480), (1280, 720))
FRAME_SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 5, 20)
# "In frames": each M2FRED crop pasted at this side (cycling) into a 640x480 face-free frame.
IN_FRAME_SIDES = (72, 96, 128, 160)
IN_FRAME_SEED = 17
GRIDS = {1: (1, 1), 5: (3, 2), 20: (5, 4)}
DEV_SEED, TEST_SEED = 15, 16

Found = tuple[list[Face], np.ndarray, int]
Finder = Callable[[np.ndarray, bool], Found]


def finders() -> dict[str, Finder]:
    """Each row as `find(image, still)`: faces in the coordinates of the returned source image
    (bordered for small photos) and the border. `still=False` is a camera frame."""
    mtcnn = MtcnnDetector(threads=THREADS)
    yunet = YunetDetector(score_threshold=0.6, verify_below=None, threads=THREADS)
    mirror = YunetDetector(threads=THREADS)
    cascade = CascadeDetector(threads=THREADS)

    def yunet_then_mtcnn(img: np.ndarray, still: bool) -> Found:
        found = find_faces(yunet, img, retry_with_border=still)
        return found if found[0] else find_faces(mtcnn, img, retry_with_border=still)

    return {
        "mtcnn": _policy(mtcnn),
        "yunet": _policy(yunet),
        "yunet+mirror": _policy(mirror),
        "yunet>mtcnn": yunet_then_mtcnn,
        "cascade-0": _policy(CascadeDetector(rescue_from=None, threads=THREADS)),
        "cascade": _policy(cascade),
    }


def _policy(det: FaceDetector) -> Finder:
    return lambda img, still: find_faces(det, img, retry_with_border=still)


def photo_sets(data: Path, quick: bool) -> dict[str, list[Path]]:
    m2 = data / "eval" / "m2fred"
    halves = m2fred_halves(identity_dirs(m2))
    rm = data / "train" / "rmfd"
    r_ids = identity_dirs(rm)
    r_dev = set(rmfd_dev(r_ids))
    lfw = data / "train" / "lfw"
    l_ids = identity_dirs(lfw)
    l_dev = set(lfw_dev(l_ids))
    sets: dict[str, list[Path]] = {}
    for half in ("test", "dev"):
        ids = halves[half]
        sets[f"m2fred masked/{half}"] = [p for i in ids for p in sorted((m2 / i).glob("*-1-0.png"))]
        sets[f"m2fred unmasked/{half}"] = [
            p for i in ids for p in sorted((m2 / i).glob("*-0-0.png"))
        ]
        chosen = [i for i in r_ids if (i in r_dev) == (half == "dev")]
        files = [p for i in chosen for p in sorted((rm / i).glob("*.jpg"))]
        sets[f"rmfd masked/{half}"] = [p for p in files if p.name.startswith("masked_")]
        sets[f"rmfd unmasked/{half}"] = [p for p in files if not p.name.startswith("masked_")]
    sets["lfw10/test"] = sorted((data / "demo" / "lfw10").glob("*/*.jpg"))
    others = [i for i in l_ids if i not in l_dev][::10]
    sets["lfw/test"] = [p for i in others for p in sorted((lfw / i).glob("*.jpg"))]
    if quick:
        sets = {k: v[:: 4 if "masked" in k else 8] for k, v in sets.items()}
    return sets


def centred(faces: list[Face], pad: int, h: int, w: int) -> Face | None:
    """The face centred in an h x w photo that was bordered by `pad` (None if there is none)."""
    for f in faces:
        box = f.box - pad
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1])
        eyes = f.landmarks[:2] - pad
        inside = bool(np.all((eyes >= box[:2]) & (eyes <= box[2:])))
        if (
            inside
            and w * 0.25 < cx < w * 0.75
            and h * 0.2 < cy < h * 0.8
            and 0.25 * max(h, w) < side < 2.0 * max(h, w)
        ):
            return f
    return None


def found_rates(rows: dict[str, Finder], sets: dict[str, list[Path]]) -> dict[str, Any]:
    """Per row and set: n, found, rate, the missed files, and per file the centred face's
    points in photo pixels (for the landmark figures) and its source image offset."""
    out: dict[str, Any] = {name: {} for name in rows}
    for set_name, files in sets.items():
        images = [load_image(p) for p in files]
        for name, find in rows.items():
            hits, missed, points = 0, [], {}
            bar = tqdm(files, desc=f"{name} {set_name}", leave=False, disable=None)
            for p, img in zip(bar, images, strict=True):
                faces, _, pad = find(img, True)
                face = centred(faces, pad, *img.shape[:2])
                if face is None:
                    missed.append(f"{p.parent.name}/{p.name}")
                    continue
                hits += 1
                points[str(p)] = (face.landmarks - pad).tolist()
            out[name][set_name] = {
                "n": len(files),
                "found": hits,
                "rate": hits / max(len(files), 1),
                "missed": missed,
                "_points": points,
            }
    return out


def in_frames(
    rows: dict[str, Finder], sets: dict[str, list[Path]], data: Path
) -> dict[str, dict[str, Any]]:
    """The camera's case: each M2FRED photo (masked and unmasked, both halves) pasted at a
    seeded place into a 640x480 face-free frame, the face IN_FRAME_SIDES px wide (cycling),
    searched as a camera frame. Found: a face box with IoU >= 0.3 against the pasted square."""
    out: dict[str, dict[str, Any]] = {name: {} for name in rows}
    for set_name in [k for k in sets if k.startswith("m2fred")]:
        files = sets[set_name]
        backgrounds = face_free(data, len(files), (640, 480), IN_FRAME_SEED)
        frames, squares = [], []
        for i, (path, (_, bg)) in enumerate(zip(files, backgrounds, strict=True)):
            side = IN_FRAME_SIDES[i % len(IN_FRAME_SIDES)]
            rng = np.random.default_rng([IN_FRAME_SEED, i])
            x, y = int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))
            frame = bg.copy()
            frame[y : y + side, x : x + side] = cv2.resize(
                load_image(path), (side, side), interpolation=cv2.INTER_AREA
            )
            frames.append(frame)
            squares.append(np.array([x, y, x + side, y + side], np.float64))
        for name, find in rows.items():
            hits = 0
            for frame, square in zip(frames, squares, strict=True):
                faces, _, pad = find(frame, False)
                hits += any(float(iou(f.box - pad, square)[0, 0]) >= 0.3 for f in faces)
            out[name][set_name] = {"n": len(files), "found": hits, "rate": hits / len(files)}
    return out


def false_positives(
    rows: dict[str, Finder], data: Path, n: int, seed: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in rows}
    for size in FF_SIZES:
        images = face_free(data, n, size, seed)
        key = f"{size[0]}x{size[1]}"
        for name, find in rows.items():
            per_kind: dict[str, int] = {}
            total = 0
            for kind, img in images:
                k = len(find(img, size[0] <= 400)[0])  # small: a photo; else a camera frame
                total += k
                per_kind[kind] = per_kind.get(kind, 0) + k
            out[name][key] = {"n": n, "faces": total, "per_image": total / n, "by_kind": per_kind}
    return out


def landmark_quality(
    rows: dict[str, Finder], found: dict[str, Any], sets: dict[str, list[Path]], data: Path
) -> dict[str, dict[str, Any]]:
    from maskid.networks.embedder import Embedder

    out: dict[str, dict[str, Any]] = {name: {} for name in rows}
    masked = sets["m2fred masked/test"]
    for name in rows:
        pts_m = found[name]["m2fred masked/test"]["_points"]
        pts_u = found[name]["m2fred unmasked/test"]["_points"]
        eyes, all5 = [], []
        for p in masked:
            u = str(p).replace("-1-0.png", "-0-0.png")
            if str(p) in pts_m and u in pts_u:
                a, b = np.asarray(pts_m[str(p)]), np.asarray(pts_u[u])
                d = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b[1] - b[0])
                eyes.append(d[:2].mean())
                all5.append(d.mean())
        out[name]["pairs"] = len(eyes)
        out[name]["masked_eye_err_iod"] = float(np.median(eyes)) if eyes else float("nan")
        out[name]["masked_all5_err_iod"] = float(np.median(all5)) if all5 else float("nan")

    embedder = Embedder()
    unmasked = sets["m2fred unmasked/test"]
    for name, find in rows.items():
        desc: dict[str, np.ndarray] = {}
        for p in masked + unmasked:
            img = load_image(p)
            faces, source, pad = find(img, True)
            face = centred(faces, pad, *img.shape[:2])
            if face is not None:
                v = embedder.embed_image(source, [embedder.chip_transform(face.landmarks)])[0]
                desc[str(p)] = v / np.linalg.norm(v)
        gallery = [str(p) for p in unmasked if str(p) in desc]
        gal = np.stack([desc[p] for p in gallery])
        gal_ids = np.array([Path(p).parent.name for p in gallery])
        right, genuine = 0, []
        for p in masked:
            if str(p) not in desc:
                continue
            s = gal @ desc[str(p)]
            best = {i: float(s[gal_ids == i].max()) for i in set(gal_ids)}
            right += max(best, key=lambda i: best[i]) == p.parent.name
            if p.parent.name in best:
                genuine.append(best[p.parent.name])
        out[name]["masked_rank1"] = right / len(masked)
        out[name]["masked_genuine_cos"] = float(np.mean(genuine))
    out_parity = dlib_parity(rows, sets, data)
    for name in rows:
        out[name].update(out_parity.get(name, {}))
    out["_embedder"] = {"model": embedder.name}
    return out


def dlib_parity(
    rows: dict[str, Finder], sets: dict[str, list[Path]], data: Path
) -> dict[str, dict[str, float]]:
    """Mean cosine between dlib-resnet-v1 descriptors of our chips and of dlib's own chips."""
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError:
        print("dlib / face_recognition_models not installed: no parity figures")
        return {}
    from maskid.alignment.dlib_chip import extract_chip
    from maskid.alignment.similarity import chip_transform
    from maskid.networks.embedder import Embedder

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ours = Embedder("dlib-resnet-v1")
    sample = sets["lfw10/test"] + sets["m2fred unmasked/test"]
    refs = []
    for p in sample:
        img = load_image(p)
        pad = round(max(img.shape[:2]) * 0.5)  # context for dlib's HOG, as in tests/test_align
        big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        rects = hog(big, 1)
        if rects:
            shape = sp(big, max(rects, key=lambda r: r.area()))
            ref = np.asarray(net.compute_face_descriptor(dlib.get_face_chip(big, shape, 150, 0.25)))
            refs.append((img, big, pad, ref / np.linalg.norm(ref)))
    out: dict[str, dict[str, float]] = {}
    for name, find in rows.items():
        cos = []
        for img, big, pad, ref in refs:
            faces, _, border = find(img, True)
            face = centred(faces, border, *img.shape[:2])
            if face is None:
                continue
            lm = face.landmarks - border + pad
            v = ours.embed_chips(extract_chip(big, chip_transform(lm))[None])[0]
            cos.append(float(v @ ref / np.linalg.norm(v)))
        out[name] = {"parity_cos": float(np.mean(cos)), "parity_n": len(cos)}
    return out


def compose(size: tuple[int, int], n: int, photos: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """n real faces on a grey frame, laid out as benchmarks/latency.py does; their squares."""
    w, h = size
    cols, rows = GRIDS[n]
    cell_w, cell_h = w // cols, h // rows
    side = min(int(0.75 * min(cell_w, cell_h)), 220)
    frame = np.full((h, w, 3), 70, np.uint8)
    boxes = []
    for i, p in enumerate(photos[:n]):
        crop = cv2.resize(load_image(p)[45:205, 45:205], (side, side), interpolation=cv2.INTER_AREA)
        x = (i % cols) * cell_w + (cell_w - side) // 2
        y = (i // cols) * cell_h + (cell_h - side) // 2
        frame[y : y + side, x : x + side] = crop
        boxes.append([x, y, x + side, y + side])
    return frame, np.asarray(boxes, np.float64)


def timing(rows: dict[str, Finder], data: Path, reps: int) -> dict[str, dict[str, Any]]:
    lfw10 = sorted((data / "demo" / "lfw10").glob("*/*.jpg"))
    photos = [lfw10[(k * 10 + k // 10) % len(lfw10)] for k in range(20)]  # 10 people, twice
    out: dict[str, dict[str, Any]] = {name: {} for name in rows}
    for size in FRAME_SIZES:
        for n in FACE_COUNTS:
            frame, squares = compose(size, n, photos)
            key = f"{size[0]}x{size[1]} {n}f"
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(reps):  # interleaved: a busy moment costs every row alike
                for name, find in rows.items():
                    t = time.perf_counter()
                    find(frame, False)
                    times[name].append((time.perf_counter() - t) * 1000)
            for name, find in rows.items():
                faces = find(frame, False)[0]
                hit = sum(
                    any(
                        s[0] < (f.box[0] + f.box[2]) / 2 < s[2]
                        and s[1] < (f.box[1] + f.box[3]) / 2 < s[3]
                        for f in faces
                    )
                    for s in squares
                )
                out[name][key] = {
                    "median_ms": float(np.median(times[name])),
                    "min_ms": float(np.min(times[name])),
                    "found": hit / n,
                    "extra_faces": len(faces) - hit,
                }
    return out


def sweep(data: Path, sets: dict[str, list[Path]], n_ff: int) -> list[dict[str, Any]]:
    """The dev data behind the cascade's thresholds: masked misses vs false positives."""
    rows: dict[str, Finder] = {}
    for t in (0.3, 0.4, 0.5, 0.6):
        for floor in (0.0, 0.05):
            det = CascadeDetector(
                yunet=YunetDetector(score_threshold=t, threads=THREADS),
                onet_floor=floor,
                threads=THREADS,
            )
            rows[f"{t}/{floor}"] = _policy(det)
    dev = {k: v for k, v in sets.items() if k.endswith("/dev") and " masked" in k}
    found = found_rates(rows, dev)
    fp = false_positives(rows, data, n_ff, DEV_SEED)
    return [
        {
            "score_threshold": float(name.split("/")[0]),
            "onet_floor": float(name.split("/")[1]),
            "missed": {k: found[name][k]["n"] - found[name][k]["found"] for k in dev},
            "fp_per_image": {k: v["per_image"] for k, v in fp[name].items()},
        }
        for name in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a sample of each set (< 1 min)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--no-sweep", action="store_true", help="skip the dev threshold sweep")
    args = ap.parse_args(argv)
    data = shared_data_dir()
    if data is None:
        raise SystemExit("../shared/data not found: nothing to measure")
    t0 = time.time()
    rows = finders()
    sets = photo_sets(data, args.quick)
    n_ff = 30 if args.quick else 200
    found = found_rates(rows, sets)
    framed = in_frames(rows, sets, data)
    fp_test = false_positives(rows, data, n_ff, TEST_SEED)
    fp_dev = false_positives(rows, data, n_ff, DEV_SEED)
    marks = landmark_quality(rows, found, sets, data) if not args.quick else {}
    speed = timing(rows, data, 5 if args.quick else 30)
    swept = sweep(data, sets, n_ff) if not (args.quick or args.no_sweep) else []

    test_sets = [k for k in sets if k.endswith("/test")]
    print(
        f"\nfound-rate, test halves (missed / n); FP = faces per face-free image (seed {TEST_SEED})"
    )
    short = {k: k.replace("/test", "").replace("unmasked", "unm.") for k in test_sets}
    head = f"{'detector':<13}" + "".join(f"{short[k]:>17}" for k in test_sets)
    head += "".join(f"{'FP ' + str(s[0]) + 'x' + str(s[1]):>14}" for s in FF_SIZES)
    print(head)
    for name in rows:
        cells = []
        for k in test_sets:
            r = found[name][k]
            cells.append(f"{r['rate']:.3f} ({r['n'] - r['found']}/{r['n']})")
        line = f"{name:<13}" + "".join(f"{c:>17}" for c in cells)
        line += "".join(f"{v['per_image']:>14.3f}" for v in fp_test[name].values())
        print(line)
    print(
        f"(dev: {', '.join(short[k].replace('/test', '') for k in test_sets[:4])} dev halves in the JSON)"
    )
    print(f"\nM2FRED in 640x480 frames (faces {IN_FRAME_SIDES} px), found-rate (missed / n)")
    framed_sets = list(next(iter(framed.values())))
    print(f"{'detector':<13}" + "".join(f"{k:>26}" for k in framed_sets))
    for name in rows:
        cells = [f"{r['rate']:.3f} ({r['n'] - r['found']}/{r['n']})" for r in framed[name].values()]
        print(f"{name:<13}" + "".join(f"{c:>26}" for c in cells))
    if marks:
        print("\nlandmarks (M2FRED test)")
        print(
            f"{'detector':<13}{'parity cos':>11}{'eyes err':>10}{'all-5 err':>10}"
            f"{'pairs':>7}{'rank-1':>8}{'genuine':>9}"
        )
        for name in rows:
            m = marks[name]
            print(
                f"{name:<13}{m.get('parity_cos', float('nan')):>11.4f}"
                f"{m['masked_eye_err_iod']:>10.3f}{m['masked_all5_err_iod']:>10.3f}"
                f"{m['pairs']:>7}{m['masked_rank1']:>8.3f}{m['masked_genuine_cos']:>9.3f}"
            )
    print(f"\nms per frame, median of runs, {THREADS} threads (share of the faces found)")
    scenes = list(next(iter(speed.values())))
    print(f"{'detector':<13}" + "".join(f"{s:>17}" for s in scenes))
    for name in rows:
        cells = [
            f"{speed[name][s]['median_ms']:.1f} ({speed[name][s]['found']:.2f})" for s in scenes
        ]
        print(f"{name:<13}" + "".join(f"{c:>17}" for c in cells))
    if swept:
        print("\ndev sweep (cascade): missed masked dev photos, FP per face-free dev image")
        for r in swept:
            missed = " ".join(f"{v:>3}" for v in r["missed"].values())
            fps = " ".join(f"{v:.3f}" for v in r["fp_per_image"].values())
            print(
                f"  threshold {r['score_threshold']:.1f} onet_floor {r['onet_floor']:.2f}: {missed}   {fps}"
            )
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        for rates in found.values():
            for r in rates.values():
                r.pop("_points")
        report = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "threads": THREADS,
            "quick": args.quick,
            "found": found,
            "in_frames": framed,
            "false_positives": {"test": fp_test, "dev": fp_dev},
            "landmarks": marks,
            "ms_per_frame": speed,
            "dev_sweep": swept,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
