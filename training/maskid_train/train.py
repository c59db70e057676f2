"""Train the masked-face student (CPU): distillation to dlib + light CosFace, eye-region gates.

    PYTHONPATH=training python -m maskid_train.train --data /work/shared/data/train \
        --dev /work/shared/data/eval/m2fred --lfw /work/shared/data/demo/lfw10 \
        --cache /work/cache/chips --variant eyes --epochs 3 --out runs/eyes

Each step draws a batch of chips; each sample is one of its K precomputed masked variants with
probability --masked-frac, else the unmasked chip. Loss per sample:
1 - cos(student(view), teacher(unmasked chip)) + --cosface-weight * CosFace(student(view), id).
Every epoch: dev evaluation (m2fred masked / unmasked control, lfw10 synthetic masks), a row in
epochs.csv, `last.pt` (resume with --resume) and `best.pt` (best dev masked TAR@FAR=1e-3).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .augment import build_mask_pool, photometric
from .data import (
    ChipSet,
    build_chip_cache,
    make_chip_shards,
    teacher_descriptors,
    training_items,
)
from .evaluate import DevEvaluator, summary_row, torch_embedder
from .losses import CosFace, class_centres, cosine_pull
from .net import Student, build_student, cosine_lr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="folder with glint23/ and celeba/")
    p.add_argument("--sets", default="glint23,celeba", help="training sets under --data")
    p.add_argument("--dev", type=Path, required=True, help="m2fred folder (dev evaluation)")
    p.add_argument("--lfw", type=Path, default=None, help="lfw10 folder (synthetic-mask check)")
    p.add_argument("--cache", type=Path, default=Path("/work/cache/chips"), help="chip cache dir")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--variant", default="eyes", help="plain | eyes | g17 | g8 (gate sites)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-size", type=int, default=0, help="samples per epoch (0: all chips)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--lr-trunk", type=float, default=2e-5, help="dlib conv weights are ~3e-3: keep it small"
    )
    p.add_argument("--lr-new", type=float, default=1e-3, help="gates and CosFace centres")
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--cosface-weight", type=float, default=0.1)
    p.add_argument("--cosface-s", type=float, default=30.0)
    p.add_argument("--cosface-m", type=float, default=0.25)
    p.add_argument("--masked-frac", type=float, default=0.7)
    p.add_argument("--k", type=int, default=2, help="synthetic masked variants per chip")
    p.add_argument("--freeze-blocks", type=int, default=7, help="frozen residual blocks (+stem)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-init", action="store_true", help="evaluate the untrained model first")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--prepare-only", action="store_true", help="build the caches and stop")
    p.add_argument(
        "--worker",
        choices=["chips", "masks"],
        default=None,
        help="extra cache worker: fill chip shards / mask-pool shards beside a main run, then stop",
    )
    return p.parse_args(argv)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_cache_dir(cache: Path, sets: tuple[str, ...]) -> Path:
    return cache / ("train" if sets == ("glint23", "celeba") else "train-" + "+".join(sets))


def run_worker(args: argparse.Namespace) -> None:
    """Help a main run build the caches (shards are locked, so workers never collide)."""
    sets = tuple(s for s in args.sets.split(",") if s)
    cache = train_cache_dir(args.cache, sets)
    items = training_items(args.data, sets)
    if args.worker == "chips":
        make_chip_shards(items, cache, progress=lambda x: tqdm(list(x), desc="chips (shards)"))
        return
    while not (cache / "meta.npz").exists():
        time.sleep(5)
    cs = ChipSet.load(cache)
    build_mask_pool(
        cs.chips,
        cs.landmarks,
        cache / f"masked_k{args.k}.npy",
        k=args.k,
        progress=lambda x: tqdm(list(x), desc="mask pool (shards)"),
    )


def prepare(args: argparse.Namespace) -> tuple[ChipSet, np.ndarray, np.ndarray, DevEvaluator]:
    sets = tuple(s for s in args.sets.split(",") if s)
    cache = train_cache_dir(args.cache, sets)
    items = training_items(args.data, sets)
    cs = build_chip_cache(items, cache, progress=lambda x: tqdm(list(x), desc="chips (shards)"))
    counts = json.loads((cache / "counts.json").read_text())
    print(f"chips: {counts}")
    teacher = teacher_descriptors(
        cs.chips, cache / "teacher.npy", progress=lambda x: tqdm(list(x), desc="teacher")
    )
    pool = build_mask_pool(
        cs.chips,
        cs.landmarks,
        cache / f"masked_k{args.k}.npy",
        k=args.k,
        progress=lambda x: tqdm(list(x), desc="mask pool (shards)"),
    )
    dev = DevEvaluator(args.dev, args.lfw, args.cache)
    return cs, teacher, pool, dev


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def save_ckpt(path: Path, **state: object) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    t_start = time.time()
    if args.worker:
        run_worker(args)
        return 0
    cs, teacher_np, pool, dev = prepare(args)
    if args.prepare_only:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "args.json").write_text(
        json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1)
    )

    n, n_classes = len(cs), len(cs.names)
    labels = torch.from_numpy(cs.labels)
    teacher = torch.from_numpy(teacher_np)
    model: Student = build_student(args.variant, args.freeze_blocks)
    head = CosFace(class_centres(teacher, labels, n_classes), args.cosface_s, args.cosface_m)
    groups = model.param_groups(args.lr_trunk, args.lr_new, args.wd)
    groups.append({"params": list(head.parameters()), "lr": args.lr_new, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    epoch_size = args.epoch_size or n
    steps_per_epoch = epoch_size // args.batch
    total = steps_per_epoch * args.epochs
    warmup = min(20, total // 10 + 1)

    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start_epoch, step, best, elapsed0 = 0, 0, -1.0, 0.0
    order = rng.permutation(n)
    cursor = 0
    if args.resume and (args.out / "last.pt").exists():
        ck = torch.load(args.out / "last.pt", weights_only=False)
        model.load_state_dict(ck["model"])
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        start_epoch, step, best = ck["epoch"], ck["step"], ck["best"]
        rng.bit_generator.state = ck["rng"]
        gen.set_state(ck["gen"])
        order, cursor, elapsed0 = ck["order"], ck["cursor"], ck["elapsed"]
        print(f"resumed at epoch {start_epoch}, step {step}")
    elif args.eval_init:
        res = dev(torch_embedder(model))
        (args.out / "dev_epoch0.json").write_text(json.dumps(res, indent=1))
        append_csv(
            args.out / "epochs.csv",
            {"epoch": 0, "step": 0, "train_loss": float("nan"), **summary_row(res), "wall_s": 0.0},
        )
        print("init:", summary_row(res))

    t0 = time.time() - elapsed0
    for epoch in range(start_epoch, args.epochs):
        model.train()
        run_loss = run_pull = run_cf = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}")
        for _ in bar:
            if cursor + args.batch > n:
                order, cursor = rng.permutation(n), 0
            idx = np.sort(order[cursor : cursor + args.batch])
            cursor += args.batch
            masked = rng.random(len(idx)) < args.masked_frac
            which = rng.integers(0, args.k, len(idx))
            x = np.array(cs.chips[idx])
            mi = np.flatnonzero(masked)
            if len(mi):
                x[mi] = pool[idx[mi], which[mi]]
            xt = photometric(torch.from_numpy(x).permute(0, 3, 1, 2).float(), gen)
            scale = cosine_lr(step, total, warmup)
            for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr * scale
            emb = model(xt)
            pull = cosine_pull(emb, teacher[idx])
            cf = head(emb, labels[idx])
            loss = pull + args.cosface_weight * cf
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at step {step}")
            run_loss += loss.item()
            run_pull += pull.item()
            run_cf += cf.item()
            k = bar.n + 1
            bar.set_postfix(
                loss=f"{run_loss / k:.4f}", pull=f"{run_pull / k:.4f}", cf=f"{run_cf / k:.3f}"
            )
            append_csv(
                args.out / "steps.csv",
                {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": loss.item(),
                    "pull": pull.item(),
                    "cosface": cf.item(),
                    "lr_scale": scale,
                    "wall_s": round(time.time() - t0, 2),
                    **model.gate_summary(),
                },
            )
        train_s = time.time() - t0
        res = dev(torch_embedder(model))
        row = summary_row(res)
        (args.out / f"dev_epoch{epoch + 1}.json").write_text(json.dumps(res, indent=1))
        append_csv(
            args.out / "epochs.csv",
            {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": run_loss / max(steps_per_epoch, 1),
                **row,
                "wall_s": round(train_s, 1),
            },
        )
        print(f"epoch {epoch + 1}: {row}")
        score = row["masked_tar@1e-3"] + 1e-3 * row["masked_rank1"]
        if score > best:
            best = score
            save_ckpt(
                args.out / "best.pt",
                model=model.state_dict(),
                variant=args.variant,
                epoch=epoch + 1,
                dev=res,
            )
        save_ckpt(
            args.out / "last.pt",
            model=model.state_dict(),
            head=head.state_dict(),
            opt=opt.state_dict(),
            epoch=epoch + 1,  # epochs completed
            step=step,
            best=best,
            rng=rng.bit_generator.state,
            gen=gen.get_state(),
            order=order,
            cursor=cursor,
            elapsed=time.time() - t0,
            variant=args.variant,
            dev=res,
        )
    print(f"done in {time.time() - t_start:.0f} s (training {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
