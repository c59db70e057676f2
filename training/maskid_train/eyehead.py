"""maskid-eyes-v2: an eye-region-weighted branch on a pretrained backbone (issue 12).

The backbone (OMZ face-reid-0095 by default) stays frozen, so its full-face descriptor keeps
what it learned from far more people than we have. Beside it, a second head reads the backbone's
last spatial maps (one cell per 16 chip px): with `--expand` (the shipped v2) its own copy of the
last expansion (1x1 conv 128 -> 512 + PReLU, from the last bottleneck's 128 x 8 x 8 output),
otherwise the backbone's own 512 x 8 x 8 map; then a learned per-row weighting (initialised to
favour the rows above the nose) and a copy of the backbone's pooling head (global depthwise 8x8
conv, 1x1 conv to 256). Everything starts from the backbone's weights and is trained by metric
learning:
- CosFace over the training identities (glint23, celeba, lfw, rmfd minus their dev ids), on the
  photos, their synthetically masked copies and rmfd's real masked photos;
- a masked <-> unmasked term: the branch's descriptor of a masked face is pulled toward the frozen
  full-face descriptor of the same person unmasked (the photo itself for a synthetic copy; the
  mean of the person's unmasked photos for a real rmfd mask).
The shipped descriptor is [full / |full|, w * eye / |eye|] (cosine), w chosen on dev.

Steps (each reads the previous one's output under --work; training/reproduce_eyes_v2.sh runs all):
  python -m maskid_train.eyehead features --chips /work/cache/chips-omz --work W --expand
  python -m maskid_train.eyehead train --chips /work/cache/chips-omz --work W --expand
  python -m maskid_train.eyehead export --work W --out python/maskid/data/models/maskid-eyes-v2.onnx

Features are computed once (the backbone is frozen), so an epoch costs ~20 s (~100 s with
--expand) on 2 cores; at run time the branch adds three small convolutions to the backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskid.face import l2_normalize

BACKBONE = "omz-face-reid-0095"
# The backbone's pooling head, from its last spatial map to the descriptor (OMZ 0095's ONNX).
FEATURE = "655"  # N x 512 x 8 x 8, after the last expansion conv and its PReLU
CHANNELS = 512
HEAD = {"gd_w": "Multiply_8794/oihw", "gd_b": "Constant_8516", "conv2_w": "408"}
# With --expand the branch also owns a copy of that expansion (1x1 conv 128 -> 512 + PReLU),
# reading the last bottleneck's output instead (N x 128 x 8 x 8).
EXPAND_FEATURE = "652"
EXPAND = {"conv1_w": "Multiply_8788", "conv1_b": "Constant_8509"}
EXPAND_SLOPE_NODE = "655"
ROWS = 8
FEATURES_FILE = os.environ.get("MASKID_EYEHEAD_FEATURES", "features.npy")
# Per-row weights start here (sigmoid of these logits): rows 0-4 hold the eyes and brows (the
# template's eyes sit at 0.46 of the chip, row 3.7), rows 5-7 the nose tip and the mouth.
ROW_LOGITS_INIT = (3.0, 3.0, 3.0, 3.0, 3.0, 0.0, -1.0, -1.0)


def _backbone_path(name: str) -> Path:
    from maskid.networks.registry import model_path

    return model_path(name)


def _initializers(onnx_path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    out = {}
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        name = t.name[: -len("/f16")] if t.name.endswith("/f16") else t.name
        out[name] = a.astype(np.float32)
    return out


def features(
    chips_prefix: Path, work: Path, backbone: str, batch: int = 64, expand: bool = False
) -> None:
    """Frozen backbone over every cached chip: the last spatial map (float16) and the full
    descriptor (float32), in the cache's row order."""
    import onnx
    import onnxruntime as ort
    from tqdm import tqdm

    from maskid_train.facecache import load_chips, model_input

    chips, index = load_chips(chips_prefix)
    src = _backbone_path(backbone)
    m = onnx.load(str(src))
    layer, channels = (EXPAND_FEATURE, 128) if expand else (FEATURE, CHANNELS)
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    work.mkdir(parents=True, exist_ok=True)
    n = len(chips)
    feat = np.lib.format.open_memmap(
        work / "features.npy", "w+", np.float16, (n, channels, ROWS, ROWS)
    )
    desc = np.zeros((n, 256), np.float32)
    contract = index["contract"]
    for s in tqdm(range(0, n, batch), desc="features", unit="batch"):
        x = model_input(np.asarray(chips[s : s + batch]), contract)
        d, f = sess.run(["descriptor", layer], {"input": x})
        feat[s : s + batch] = f.astype(np.float16)
        desc[s : s + batch] = d
    feat.flush()
    np.save(work / "descriptors.npy", desc)
    (work / "features.json").write_text(
        json.dumps({"chips": str(chips_prefix), "backbone": backbone, "rows": n})
    )


# ----------------------------------------------------------------------------- the branch


def build_branch(init: dict[str, np.ndarray]) -> Any:
    """The branch; with "conv1_w" in `init` it starts from the 128-channel map (see EXPAND)."""
    import torch
    from torch import nn

    class EyeBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.row_logits = nn.Parameter(torch.tensor(ROW_LOGITS_INIT))
            self.gd = nn.Conv2d(CHANNELS, CHANNELS, ROWS, groups=CHANNELS)
            self.conv2 = nn.Conv2d(CHANNELS, 256, 1, bias=False)
            self.expand = "conv1_w" in init
            if self.expand:
                self.conv1_w = nn.Parameter(torch.from_numpy(init["conv1_w"][:, :, 0, 0].copy()))
                self.conv1_b = nn.Parameter(torch.from_numpy(init["conv1_b"].reshape(-1).copy()))
                self.alpha = nn.Parameter(torch.tensor(float(init["alpha"][0])))
            with torch.no_grad():
                self.gd.weight.copy_(torch.from_numpy(init["gd_w"]))
                self.gd.bias.copy_(torch.from_numpy(init["gd_b"].reshape(-1)))
                self.conv2.weight.copy_(torch.from_numpy(init["conv2_w"]))

        def row_weights(self) -> torch.Tensor:
            return torch.sigmoid(self.row_logits)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            # The depthwise 8x8 conv on an 8x8 map is a weighted sum per channel: written as one
            # contraction (with the row weights folded into its kernel) it trains ~10x faster.
            if self.expand:
                f = torch.einsum("nchw,oc->nohw", f, self.conv1_w) + self.conv1_b[:, None, None]
                f = torch.where(f >= 0, f, self.alpha * f)
            k = self.gd.weight[:, 0] * self.row_weights()[None, :, None]
            x = torch.einsum("nchw,chw->nc", f, k) + self.gd.bias
            return x @ self.conv2.weight[:, :, 0, 0].T

    return EyeBranch()


def head_init(backbone_onnx: Path, expand: bool = False) -> dict[str, np.ndarray]:
    inits = _initializers(backbone_onnx)
    out = {k: inits[v] for k, v in HEAD.items()}
    if expand:
        import onnx

        out.update({k: inits[v] for k, v in EXPAND.items()})
        nodes = onnx.load(str(backbone_onnx)).graph.node
        (lrelu,) = [n for n in nodes if n.name == EXPAND_SLOPE_NODE]
        out["alpha"] = np.array([a.f for a in lrelu.attribute if a.name == "alpha"], np.float32)
    return out


# ----------------------------------------------------------------------------- dev proxy


def proxy_eval(full: np.ndarray, eye: np.ndarray, index: dict[str, Any], rows: np.ndarray,
               w: float) -> dict[str, float]:  # fmt: skip
    """Closed-set masked rank-1 and TAR@1e-3 on cached chips (enroll unmasked photos + their
    masked copies if cached, probe the real masked photos): a fast proxy for choosing the
    epoch; the product pipeline (benchmarks/accuracy.py) makes the real choice."""
    from maskid.evaluation.metrics import identification_report

    d = np.concatenate([l2_normalize(full[rows]), w * l2_normalize(eye[rows])], axis=1)
    d = l2_normalize(d)
    label = index["label"][rows]
    masked = index["masked"][rows].astype(bool)
    copy = index["copy"][rows]
    enroll = ~masked | (copy > 0)
    probe = masked & (copy == 0)
    names = sorted(set(label[enroll]))
    pos = {n: i for i, n in enumerate(names)}
    sims = d[probe] @ d[enroll].T
    owner = np.array([pos[n] for n in label[enroll]])
    scores = np.full((probe.sum(), len(names)), -np.inf)
    for j in range(len(names)):
        cols = owner == j
        if cols.any():
            scores[:, j] = sims[:, cols].max(1)
    truth = np.array([pos.get(n, -1) for n in label[probe]])
    rep = identification_report(scores, truth, np.zeros(len(truth), bool))
    return {"rank1": rep.rank1, "tar": rep.tar_at_far_1e_3, "eer": rep.eer}


# ----------------------------------------------------------------------------- training


def train(
    chips_prefix: Path,
    work: Path,
    backbone: str,
    epochs: int,
    lr: float,
    distill: float,
    margin: float,
    seed: int,
    real_repeat: int = 10,
    expand: bool = False,
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from maskid.paths import shared_data_dir
    from maskid_train.facecache import load_chips, split_rows

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    _, index = load_chips(chips_prefix)
    feats = np.load(work / FEATURES_FILE, mmap_mode="r")
    full = np.load(work / "descriptors.npy")
    data = shared_data_dir()
    assert data is not None
    splits = split_rows(index, data, synthetic_eval=True)
    tr = splits["train"]
    label = index["label"]
    masked = index["masked"].astype(bool) | (index["copy"] > 0)
    classes = sorted(set(label[tr]))
    cls = {c: i for i, c in enumerate(classes)}
    y = np.array([cls[c] for c in label[tr]])
    # Teacher for every training row: the frozen full descriptor of the same face unmasked
    # (a copy's own photo; for a real rmfd mask, the mean over the person's unmasked photos).
    fn = l2_normalize(full)
    photo_key = np.char.add(np.char.add(label.astype(str), "|"), index["path"].astype(str))
    orig = {}
    for r in np.flatnonzero(index["copy"] == 0):
        orig[photo_key[r]] = r
    id_mean: dict[str, np.ndarray] = {}
    for c in classes:
        rows = tr[(label[tr] == c) & ~masked[tr]]
        if len(rows):
            id_mean[c] = l2_normalize(fn[rows].mean(0))
    teacher = np.zeros((len(tr), fn.shape[1]), np.float32)
    has_teacher = np.zeros(len(tr), bool)
    for i, r in enumerate(tr):
        if index["copy"][r] > 0 and photo_key[r] in orig:
            teacher[i], has_teacher[i] = fn[orig[photo_key[r]]], True
        elif label[r] in id_mean:
            teacher[i], has_teacher[i] = id_mean[label[r]], True
    branch = build_branch(head_init(_backbone_path(backbone), expand))
    centres = torch.nn.Parameter(torch.from_numpy(np.stack([
        id_mean.get(c, l2_normalize(fn[tr[label[tr] == c]].mean(0))) for c in classes
    ]).astype(np.float32)))  # fmt: skip
    rest = [p for n, p in branch.named_parameters() if n != "row_logits"]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": lr},
            {"params": [branch.row_logits], "lr": lr * 30, "weight_decay": 0.0},
            {"params": [centres], "lr": lr * 10, "weight_decay": 0.0},
        ],
        weight_decay=1e-4,
    )
    scale = 30.0
    batch = 256
    x_all = torch.from_numpy(np.asarray(feats[tr]))  # float16 in memory, float32 per batch
    t_all = torch.from_numpy(teacher)
    y_all = torch.from_numpy(y)
    h_all = torch.from_numpy(has_teacher)
    dev_rows = {k: splits[k] for k in ("m2fred-dev", "rmfd-dev")}

    def embed_all() -> np.ndarray:
        branch.eval()
        with torch.no_grad():
            out = [
                branch(torch.from_numpy(np.asarray(feats[s : s + 2048], np.float32))).numpy()
                for s in range(0, len(feats), 2048)
            ]
        branch.train()
        return np.concatenate(out)

    log = []
    eye0 = embed_all()
    log.append(
        {"epoch": 0, **{k: proxy_eval(full, eye0, index, r, 1.0) for k, r in dev_rows.items()}}
    )
    print(json.dumps(log[-1]), flush=True)
    best_state, best_score = None, -1.0
    src_tr = index["source"][tr].astype(str)
    real_rows = np.flatnonzero(
        (src_tr == "rmfd") & index["masked"][tr].astype(bool) & (index["copy"][tr] == 0)
    )
    rmfd_rows = np.flatnonzero((src_tr == "rmfd") & ~np.isin(np.arange(len(tr)), real_rows))
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        # Real masks are rare (rmfd: ~300 training photos among 56k rows): seen `real_repeat`
        # times an epoch, the person's other rmfd rows `real_repeat // 3` times.
        extra = [
            np.repeat(real_rows, real_repeat - 1),
            np.repeat(rmfd_rows, max(real_repeat // 3 - 1, 0)),
        ]
        order = rng.permutation(np.concatenate([np.arange(len(tr)), *extra]))
        total = 0.0
        for s in range(0, len(order), batch):
            idx = torch.from_numpy(order[s : s + batch])
            e = F.normalize(branch(x_all[idx].float()), dim=1)
            logits = e @ F.normalize(centres, dim=1).T
            onehot = F.one_hot(y_all[idx], len(classes)).float()
            loss = F.cross_entropy(scale * (logits - margin * onehot), y_all[idx])
            h = h_all[idx]
            if distill > 0 and h.any():
                cos = (e[h] * t_all[idx][h]).sum(1)
                loss = loss + distill * (1 - cos).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        eye = embed_all()
        ev = {k: proxy_eval(full, eye, index, r, 1.0) for k, r in dev_rows.items()}
        score = float(np.mean([v["rank1"] + v["tar"] for v in ev.values()]))
        rw = [round(float(v), 3) for v in branch.row_weights().detach()]
        log.append({"epoch": epoch, "loss": total / len(order), **ev, "rows": rw,
                    "seconds": time.perf_counter() - t0})  # fmt: skip
        print(json.dumps(log[-1]), flush=True)
        if score > best_score:
            best_score = score
            best_state = {k: v.detach().clone() for k, v in branch.state_dict().items()}
            np.save(work / "eye_descriptors.npy", eye)
    assert best_state is not None
    best_epoch = max(
        log[1:], key=lambda r: np.mean([r[k]["rank1"] + r[k]["tar"] for k in dev_rows])
    )
    torch.save(best_state, work / "branch.pt")
    summary = {"backbone": backbone, "epochs": epochs, "lr": lr, "distill": distill,
               "margin": margin, "seed": seed, "real_repeat": real_repeat, "expand": expand, "classes": len(classes), "train_rows": len(tr),
               "best_epoch": best_epoch["epoch"], "log": log}  # fmt: skip
    (work / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def weight_sweep(chips_prefix: Path, work: Path) -> dict[str, Any]:
    """Proxy dev figures of the combined descriptor for a few eye weights."""
    from maskid.paths import shared_data_dir
    from maskid_train.facecache import load_chips, split_rows

    _, index = load_chips(chips_prefix)
    full = np.load(work / "descriptors.npy")
    eye = np.load(work / "eye_descriptors.npy")
    data = shared_data_dir()
    assert data is not None
    splits = split_rows(index, data, synthetic_eval=True)
    out = {}
    for w in (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 100.0):
        out[str(w)] = {k: proxy_eval(full, eye, index, splits[k], w)
                       for k in ("m2fred-dev", "rmfd-dev")}  # fmt: skip
        print(w, json.dumps(out[str(w)]), flush=True)
    return out


# ----------------------------------------------------------------------------- export


def export(work: Path, out: Path, backbone: str, weight: float, name: str) -> None:
    """The backbone's ONNX plus the trained branch on its last spatial map; the descriptor is
    [full / |full|, weight * eye / |eye|]. The contract is the backbone's (same chip)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    src = _backbone_path(backbone)
    m = onnx.load(str(src))
    state = torch.load(work / "branch.pt", map_location="cpu")
    g = m.graph
    (old_out,) = [n for n in g.node if "descriptor" in n.output]
    old_out.output[0] = "full_descriptor"
    old_out.name = "full_descriptor"

    def init(nm: str, a: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(a, np.float32), "eye/" + nm))
        return "eye/" + nm

    def node(op: str, ins: list[str], nm: str, **kw: Any) -> str:
        g.node.append(helper.make_node(op, ins, ["eye/" + nm], name="eye/" + nm, **kw))
        return "eye/" + nm

    rw = torch.sigmoid(state["row_logits"]).numpy().reshape(1, 1, ROWS, 1)
    x = FEATURE
    if "conv1_w" in state:  # the branch's own copy of the expansion
        x = node("Conv", [EXPAND_FEATURE, init("conv1_w", state["conv1_w"].numpy()[:, :, None, None]),
                          init("conv1_b", state["conv1_b"].numpy())], "conv1")  # fmt: skip
        x = node("LeakyRelu", [x], "prelu", alpha=float(state["alpha"]))
    x = node("Mul", [x, init("row_weights", rw)], "rows")
    x = node("Conv", [x, init("gd_w", state["gd.weight"].numpy()),
                      init("gd_b", state["gd.bias"].numpy())], "gd", group=CHANNELS)  # fmt: skip
    x = node("Conv", [x, init("conv2_w", state["conv2.weight"].numpy())], "conv2")
    eye = node("Flatten", [x], "flat", axis=1)

    def l2(t: str, nm: str) -> str:
        n = node("ReduceL2", [t], nm + "_norm", axes=[1], keepdims=1)
        n = node("Max", [n, init(nm + "_eps", np.array(1e-12))], nm + "_clip")
        return node("Div", [t, n], nm + "_unit")

    full_u = l2("full_descriptor", "full")
    eye_u = node("Mul", [l2(eye, "eye"), init("weight", np.array(weight))], "weighted")
    g.node.append(helper.make_node("Concat", [full_u, eye_u], ["descriptor"], axis=1,
                                   name="descriptor"))  # fmt: skip
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["N", 512]))
    meta = {p.key: p.value for p in m.metadata_props}
    meta.update({
        "model_name": name,
        "descriptor_dim": "512",
        "version": f"{name}+{json.loads((work / 'train.json').read_text())['best_epoch']}",
        "eye_weight": json.dumps(weight),
        "eye_row_weights": json.dumps([round(float(v), 4) for v in rw.reshape(-1)]),
        "backbone": backbone,
        "source": f"{meta.get('source', '')} + eye branch trained by training/maskid_train/eyehead.py",
        # the backbone's licence; the branch learned from research-licensed images
        "licence": f"{meta.get('licence', '')} backbone + research-use branch (MODEL_CARD.md)",
    })  # fmt: skip
    del m.metadata_props[:]
    helper.set_model_props(m, meta)
    g.name = name
    onnx.checker.check_model(m)
    tmp = out.with_suffix(".tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["features", "train", "sweep", "export"])
    ap.add_argument("--chips", type=Path, default=Path("/work/cache/chips-omz"))
    ap.add_argument("--work", type=Path, default=Path("/work/cache/eyes-v2"))
    ap.add_argument("--backbone", default=BACKBONE)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--distill", type=float, default=1.0, help="masked<->unmasked term weight")
    ap.add_argument("--margin", type=float, default=0.2, help="CosFace margin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-repeat", type=int, default=10, help="rmfd real masks per epoch")
    ap.add_argument(
        "--expand", action="store_true", help="train a copy of the expansion conv too (652 maps)"
    )
    ap.add_argument("--weight", type=float, default=1.0, help="eye weight in the descriptor")
    ap.add_argument("--name", default="maskid-eyes-v2")
    ap.add_argument(
        "--out", type=Path, default=Path("python/maskid/data/models/maskid-eyes-v2.onnx")
    )
    a = ap.parse_args(argv)
    if a.step == "features":
        features(a.chips, a.work, a.backbone, expand=a.expand)
    elif a.step == "train":
        train(a.chips, a.work, a.backbone, a.epochs, a.lr, a.distill, a.margin, a.seed,
              a.real_repeat, a.expand)  # fmt: skip
    elif a.step == "sweep":
        weight_sweep(a.chips, a.work)
    else:
        export(a.work, a.out, a.backbone, a.weight, a.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
