"""Fine-tune the periocular branch of the eye-region-weighted embedder (maskid-eyes-v1).

The shipped model's descriptor is [l2(dlib(chip)), w * l2(eye(upper chip))]: the full-face
branch is dlib's network, untouched (so unmasked matching keeps dlib's quality); the periocular
branch sees only the chip's top rows (eyes and brows, above a mask) stretched to 150x150, and
starts from dlib's weights. Training moves only that branch:

* distillation: both views of a face (unmasked, synthetically masked) are pulled to the frozen
  pretrained branch's descriptor of the unmasked view (keeps dlib's generalisation and pulls the
  masked view to the unmasked one, as in Boutros et al.). The pull is the squared Euclidean
  distance of the raw descriptors, dlib's own metric: a cosine pull is satisfied by a collapsed
  constant output (all dlib descriptors lie within ~25 degrees of each other), which we saw;
* CosFace over the training identities on both views (metric learning on the eye region).

`--realigned replace|mix` draws the masked views from `training/experiments/realign_masked.py`'s pool
instead (each masked chip re-aligned from a detection on it, as a real masked probe is): issue
5's experiment, measured and not shipped (training/README.md).

The early stages (stem + the 32-channel blocks) stay frozen: they are generic edge detectors
and they hold most of the compute, so freezing them makes a CPU epoch affordable.

Checkpoints: OUT/best.pt (best dev masked TAR, what `--export` writes) and OUT/last.pt after
every epoch (branch, CosFace centres, optimiser and both random generators), so `--resume`
continues an interrupted run and ends with the same weights as an uninterrupted one (tested).
The shipped recipe, from scratch in one command: training/reproduce_eyes_v1.sh.

    PYTHONPATH=training python -m maskid_train.periocular --cache /work/cache/chips \
        --dev ../shared/data/eval/m2fred --lfw ../shared/data/demo/lfw10 \
        --out runs/periocular --epochs 3 --steps 110 --lr 1e-5 --cosface 0.05
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from maskid_train.dlib_torch import DlibResNet, load_pretrained

from .evaluate import DevEvaluator, summary_row
from .losses import CosFace, class_centres

EYE_ROWS = 90  # chip rows 0..89: eyes at ~47, nose tip at ~88 (dlib chip geometry, 150 px)
EYE_WEIGHT = 1.0  # weight of the periocular half of the descriptor (cosine = mean of both)
CHIP = 150


def eye_view(x: torch.Tensor, rows: int = EYE_ROWS) -> torch.Tensor:
    """(N,3,150,150) RGB 0..255 -> the top `rows` rows stretched back to 150x150 (half-pixel
    bilinear, as the exported ONNX Resize)."""
    return F.interpolate(x[:, :, :rows], size=(CHIP, CHIP), mode="bilinear", align_corners=False)


class FusedEmbedder(nn.Module):
    """[l2(full(x)), w * l2(eye(eye_view(x)))]: the exported graph, in PyTorch."""

    def __init__(
        self, full: DlibResNet, eye: DlibResNet, rows: int = EYE_ROWS, weight: float = EYE_WEIGHT
    ) -> None:
        super().__init__()
        self.full, self.eye, self.rows, self.weight = full, eye, rows, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.normalize(self.full(x), dim=1)
        b = F.normalize(self.eye(eye_view(x, self.rows)), dim=1)
        return torch.cat([a, self.weight * b], dim=1)


def freeze_early(net: DlibResNet, trainable_from: int) -> list[nn.Parameter]:
    """Freeze the stem and blocks[:trainable_from]; return the parameters left to train."""
    for p in net.parameters():
        p.requires_grad_(False)
    params = []
    for block in list(net.blocks)[trainable_from:]:
        for p in block.parameters():
            p.requires_grad_(True)
            params.append(p)
    for p in net.fc.parameters():
        p.requires_grad_(True)
        params.append(p)
    return params


def _batch(arr: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr[np.sort(idx)])).permute(0, 3, 1, 2).float()


def teacher_eye(chips: np.ndarray, out: Path, batch: int = 128) -> np.ndarray:
    """Frozen pretrained branch's descriptors of every unmasked chip's eye view (cached)."""
    if out.exists():
        return np.load(out)
    net = load_pretrained()
    res = np.zeros((len(chips), 128), np.float32)
    with torch.inference_mode():
        for s in tqdm(range(0, len(chips), batch), desc="teacher (eye view)"):
            part = np.array(chips[s : s + batch])  # a writable copy: torch warns on memmaps
            x = torch.from_numpy(part).permute(0, 3, 1, 2)
            res[s : s + batch] = net(eye_view(x.float())).numpy()
    np.save(out, res)
    return res


def build_caches(data: Path, train: Path) -> None:
    """The chip cache and the K=2 mask pool of `maskid_train.train` (reused where present)."""
    from .augment import build_mask_pool
    from .data import build_chip_cache, training_items

    cs = build_chip_cache(
        training_items(data, ("glint23", "celeba")),
        train,
        progress=lambda x: tqdm(list(x), desc="chips (shards)"),
    )
    build_mask_pool(
        cs.chips,
        cs.landmarks,
        train / "masked_k2.npy",
        k=2,
        progress=lambda x: tqdm(list(x), desc="mask pool (shards)"),
    )


def export_eye_weights(checkpoint: Path, out: Path) -> Path:
    """Write the trained branch's parameters as fp16 arrays (what differs from dlib's file);
    `maskid.networks.registry` builds the fused ONNX from them and dlib's .dat on first use."""
    from maskid_train.dlib_torch import weight_arrays_of

    eye = load_pretrained()
    eye.load_state_dict(torch.load(checkpoint, map_location="cpu")["eye"])
    arrays = {f"p{i:03d}": a.astype(np.float16) for i, a in enumerate(weight_arrays_of(eye))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="chip cache (see maskid_train.train)")
    ap.add_argument(
        "--data",
        type=Path,
        help="identity folders (shared/data/train): build the chip cache and the mask pool from "
        "glint23 + celeba first where <cache>/train lacks them (as maskid_train.train does)",
    )
    ap.add_argument("--dev", type=Path, help="m2fred folder")
    ap.add_argument("--lfw", type=Path, default=None, help="lfw10 folder (dev check)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--cosface", type=float, default=0.02, help="weight of the CosFace term")
    ap.add_argument("--trainable-from", type=int, default=3, help="first trainable block")
    ap.add_argument("--steps", type=int, default=0, help="steps per epoch (0: one pass)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--realigned",
        choices=("none", "replace", "mix"),
        default="none",
        help="masked views from <cache>/train/masked_k2_realigned.npy (training/experiments/realign_masked.py:"
        " re-aligned from a detection on the masked chip, as a real masked probe): none (the "
        "chip-level pool, the shipped v1 recipe), replace, or mix (each masked view 50/50)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument(
        "--export",
        type=Path,
        default=None,
        help="only write OUT/best.pt's branch as fp16 .npz here (python/maskid/data/models/"
        "maskid-eyes-v1.eye.npz ships it)",
    )
    args = ap.parse_args(argv)
    if args.export is not None:
        print(export_eye_weights(args.out / "best.pt", args.export))
        return 0
    if args.cache is None or args.dev is None:
        ap.error("--cache and --dev are needed to train")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train = args.cache / "train"
    if args.data is not None:
        build_caches(args.data, train)
    chips = np.load(train / "chips.npy", mmap_mode="r")
    masked = np.load(train / "masked_k2.npy", mmap_mode="r")
    realigned = None
    if args.realigned != "none":
        realigned = np.load(train / "masked_k2_realigned.npy", mmap_mode="r")
        if realigned.shape != masked.shape:
            raise SystemExit("masked_k2_realigned.npy does not match the mask pool: rebuild it")
        if args.realigned == "replace":
            masked, realigned = realigned, None
    meta = np.load(train / "meta.npz")
    labels = torch.from_numpy(meta["labels"])
    n_classes = len(meta["names"])
    teacher = torch.from_numpy(teacher_eye(chips, train / "teacher_eye.npy"))

    full = load_pretrained()
    eye = load_pretrained()
    params = freeze_early(eye, args.trainable_from)
    head = CosFace(class_centres(teacher, labels, n_classes))
    opt = torch.optim.AdamW(
        [{"params": params, "lr": args.lr}, {"params": head.parameters(), "lr": args.lr * 10}],
        weight_decay=1e-4,
    )
    model = FusedEmbedder(full, eye).eval()
    evaluator = DevEvaluator(args.dev, args.lfw, args.cache)

    def embed(x_u8: np.ndarray) -> np.ndarray:
        model.eval()
        outs = []
        with torch.inference_mode():
            for s in range(0, len(x_u8), 64):
                x = torch.from_numpy(np.ascontiguousarray(x_u8[s : s + 64])).permute(0, 3, 1, 2)
                outs.append(model(x.float()).numpy())
        return np.concatenate(outs)

    best, first = -1.0, 0
    last = args.out / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, weights_only=False)
        eye.load_state_dict(state["eye"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        best, first = state["best"], state["epoch"] + 1
        print(f"resuming after epoch {state['epoch']} (best dev score {best:.4f})")
    log = (args.out / "epochs.csv").open("a" if first else "w", newline="")
    writer: csv.DictWriter[str] | None = None
    start = time.perf_counter()
    n = len(chips)
    steps = args.steps or n // args.batch
    for epoch in range(first, args.epochs + 1):
        if epoch > 0:
            eye.train()
            order = rng.permutation(n)
            bar = tqdm(range(steps), desc=f"epoch {epoch}/{args.epochs}")
            for step in bar:
                idx = order[(step * args.batch) % n :][: args.batch]
                if len(idx) < args.batch:
                    idx = rng.choice(n, args.batch, replace=False)
                idx = np.sort(idx)
                k = rng.integers(0, masked.shape[1], len(idx))
                xu = _batch(chips, idx)
                views = np.ascontiguousarray(masked[idx, k]).copy()
                if realigned is not None:  # mix: each masked view realigned with p = 0.5
                    use = rng.random(len(idx)) < 0.5
                    views[use] = realigned[idx[use], k[use]]
                xm = torch.from_numpy(views).permute(0, 3, 1, 2).float()
                x = eye_view(torch.cat([xu, xm]))
                emb = eye(x)
                t = teacher[idx].repeat(2, 1)
                y = labels[idx].repeat(2)
                pull = (emb - t).pow(2).sum(dim=1).mean()
                cf = head(emb, y)
                loss = pull + args.cosface * cf
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.set_postfix(pull=f"{pull.item():.4f}", cf=f"{cf.item():.3f}")
        res = evaluator(embed)
        row = {"epoch": epoch, **summary_row(res), "wall_s": round(time.perf_counter() - start)}
        (args.out / f"dev_epoch{epoch}.json").write_text(json.dumps(res, indent=1))
        if writer is None:
            writer = csv.DictWriter(log, fieldnames=list(row))
            if not first:
                writer.writeheader()
        writer.writerow(row)
        log.flush()
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        score = row["masked_enroll+masks_tar@1e-3"] + row["masked_tar@1e-3"]
        if epoch > 0 and score > best:
            best = score
            torch.save({"eye": eye.state_dict(), "epoch": epoch}, args.out / "best.pt")
        state = {
            "eye": eye.state_dict(),
            "head": head.state_dict(),
            "opt": opt.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "best": best,
            "epoch": epoch,
        }
        torch.save(state, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)  # a crash mid-save leaves the previous last.pt
    log.close()
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
