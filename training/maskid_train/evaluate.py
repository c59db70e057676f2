"""Dev evaluation on chips made by maskid's own detector/align/chip (cached per dev set).

Protocols (open-set scores = max cosine over each identity's enrolled descriptors, reported by
`maskid.evaluation.metrics.identification_report`; probes with no face found count as errors):

* m2fred masked: enroll every ``*-0-0.png`` (unmasked), probe every ``*-1-0.png`` (real masks);
  also with 3 synthetic masked copies of each enrolled chip beside it ("enroll+masks").
* m2fred unmasked control: enroll ``1-0-0.png``, probe the other sessions' ``*-0-0.png``.
* lfw10 synthetic: enroll each person's first photo, probe photos 2-10 with a synthetic mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskid.evaluation.metrics import identification_report
from maskid.face import l2_normalize

from .augment import masked_variants
from .data import CHIP, ChipMaker

Embed = Callable[[np.ndarray], np.ndarray]  # uint8 (N,150,150,3) -> (N,D)


@dataclass
class DevSet:
    chips: np.ndarray  # (P,150,150,3); zeros where no face
    landmarks: np.ndarray  # (P,5,2)
    found: np.ndarray  # (P,) bool
    identity: np.ndarray  # (P,) str
    file: np.ndarray  # (P,) str: file name within the identity folder


def dev_set(root: Path, cache: Path, pad: float) -> DevSet:
    """Chips of every image in root/<identity>/ (cached as one npz)."""
    if cache.exists():
        z = np.load(cache)
        return DevSet(z["chips"], z["landmarks"], z["found"], z["identity"], z["fname"])
    maker = ChipMaker()
    files = sorted(
        (p.parent.name, p)
        for p in root.glob("*/*")
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    chips = np.zeros((len(files), CHIP, CHIP, 3), np.uint8)
    lms = np.zeros((len(files), 5, 2), np.float32)
    found = np.zeros(len(files), bool)
    for i, (_, p) in enumerate(files):
        r = maker(str(p), pad)
        if r is not None:
            chips[i], lms[i], found[i] = r[0], r[1], True
    cache.parent.mkdir(parents=True, exist_ok=True)
    identity = np.array([n for n, _ in files])
    names = np.array([p.name for _, p in files])
    np.savez(cache, chips=chips, landmarks=lms, found=found, identity=identity, fname=names)
    return DevSet(chips, lms, found, identity, names)


def _report(
    enroll_vecs: np.ndarray,
    enroll_ids: np.ndarray,
    probe_vecs: np.ndarray,
    probe_ids: np.ndarray,
    probe_found: np.ndarray,
) -> dict[str, float | int]:
    names = sorted(set(enroll_ids.tolist()))
    index = {n: i for i, n in enumerate(names)}
    owner = np.array([index[n] for n in enroll_ids])
    sims = l2_normalize(probe_vecs) @ l2_normalize(enroll_vecs).T  # (P, E)
    scores = np.full((len(probe_vecs), len(names)), -np.inf)
    for j in range(len(names)):
        scores[:, j] = sims[:, owner == j].max(axis=1)
    truth = np.array([index.get(n, -1) for n in probe_ids])
    return identification_report(scores, truth, ~probe_found).as_dict()


def enrollment_copies(chips: np.ndarray, landmarks: np.ndarray, seed: int = 7) -> np.ndarray:
    """3 synthetic masked copies per chip (chip-frame masks, fixed seed): (3N,150,150,3)."""
    return np.concatenate(
        [
            masked_variants(c, lm, 3, seed * 1_000_003 + i)
            for i, (c, lm) in enumerate(zip(chips, landmarks, strict=True))
        ]
    )


class DevEvaluator:
    """Holds the dev chips (and fixed synthetic masks) so each epoch only pays the forward."""

    def __init__(self, m2fred: Path, lfw10: Path | None, cache: Path) -> None:
        self.m2 = dev_set(m2fred, cache / "dev_m2fred.npz", pad=0.5)
        sess = np.array([f.split("-")[0] for f in self.m2.file])
        masked = np.array([f.split("-")[1] == "1" for f in self.m2.file])
        self.enroll = np.flatnonzero(~masked & self.m2.found)
        self.probe = np.flatnonzero(masked)
        self.ctrl_enroll = np.flatnonzero(~masked & (sess == "1") & self.m2.found)
        self.ctrl_probe = np.flatnonzero(~masked & (sess != "1"))
        e = self.enroll
        self.enroll_masked = enrollment_copies(self.m2.chips[e], self.m2.landmarks[e])
        self.lfw: DevSet | None = None
        if lfw10 is not None and lfw10.is_dir():
            self.lfw = dev_set(lfw10, cache / "dev_lfw10.npz", pad=0.0)
            first = np.zeros(len(self.lfw.file), bool)
            for n in set(self.lfw.identity.tolist()):
                first[np.flatnonzero(self.lfw.identity == n)[0]] = True
            self.lfw_enroll = np.flatnonzero(first & self.lfw.found)
            self.lfw_probe = np.flatnonzero(~first)
            rng = np.random.default_rng(11)
            self.lfw_probe_chips = np.stack(
                [
                    masked_variants(
                        self.lfw.chips[i], self.lfw.landmarks[i], 1, int(rng.integers(1 << 30))
                    )[0]
                    if self.lfw.found[i]
                    else self.lfw.chips[i]
                    for i in self.lfw_probe
                ]
            )

    def __call__(self, embed: Embed) -> dict[str, dict[str, float | int]]:
        m2 = self.m2
        vec = embed(m2.chips)
        out = {}
        ids, found = m2.identity, m2.found
        out["m2fred_masked"] = _report(
            vec[self.enroll], ids[self.enroll], vec[self.probe], ids[self.probe], found[self.probe]
        )
        em = embed(self.enroll_masked)
        out["m2fred_masked_enroll+masks"] = _report(
            np.concatenate([vec[self.enroll], em]),
            np.concatenate([ids[self.enroll], np.repeat(ids[self.enroll], 3)]),
            vec[self.probe],
            ids[self.probe],
            found[self.probe],
        )
        out["m2fred_unmasked_control"] = _report(
            vec[self.ctrl_enroll],
            ids[self.ctrl_enroll],
            vec[self.ctrl_probe],
            ids[self.ctrl_probe],
            found[self.ctrl_probe],
        )
        if self.lfw is not None:
            lf = self.lfw
            ev = embed(lf.chips[self.lfw_enroll])
            pv = embed(self.lfw_probe_chips)
            out["lfw10_synthetic_masked"] = _report(
                ev,
                lf.identity[self.lfw_enroll],
                pv,
                lf.identity[self.lfw_probe],
                lf.found[self.lfw_probe],
            )
        return out


def torch_embedder(model, batch: int = 64) -> Embed:
    import torch

    def embed(chips: np.ndarray) -> np.ndarray:
        model.eval()
        outs = []
        with torch.inference_mode():
            for s in range(0, len(chips), batch):
                x = torch.from_numpy(np.ascontiguousarray(chips[s : s + batch])).permute(0, 3, 1, 2)
                outs.append(model(x.float()).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 128), np.float32)

    return embed


def summary_row(res: dict[str, dict[str, float | int]]) -> dict[str, float]:
    """The numbers the ablation table reports."""
    m, c = res["m2fred_masked"], res["m2fred_unmasked_control"]
    row = {
        "masked_rank1": float(m["rank1"]),
        "masked_tar@1e-3": float(m["tar_at_far_1e-3"]),
        "masked_eer": float(m["eer"]),
        "masked_enroll+masks_rank1": float(res["m2fred_masked_enroll+masks"]["rank1"]),
        "masked_enroll+masks_tar@1e-3": float(res["m2fred_masked_enroll+masks"]["tar_at_far_1e-3"]),
        "unmasked_control_rank1": float(c["rank1"]),
    }
    if "lfw10_synthetic_masked" in res:
        row["lfw10_masked_rank1"] = float(res["lfw10_synthetic_masked"]["rank1"])
        row["lfw10_masked_tar@1e-3"] = float(res["lfw10_synthetic_masked"]["tar_at_far_1e-3"])
    return row
