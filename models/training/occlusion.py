"""Train the mouth-occlusion model (lipsync_service/core/occlusion.py) and export its ONNX.

`lipsync-service train occlusion OUT_DIR [--media DIR ...] [--cache FILE] [--steps N]`: reads the training clips'
mouths with the service's own detector and face mesh (occlusion_data; held-out identities never enter), then
trains a small U-Net on canonical mouth crops with synthetic occluders composited over them (occlusion_synth,
exact masks) and clean crops, with the mesh misaligned, colours, blur, noise and JPEG artefacts varied. Writes
occlusion.pt and occlusion.onnx into OUT_DIR and prints validation figures on clips left out of training.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np

from lipsync_models.training import occlusion_synth as synth
from lipsync_models.training.occlusion_data import MARGIN, STORE_SCALE
from lipsync_service.core.occlusion import COVER_CONFIDENCE

DEFAULT_CACHE = Path.home() / ".cache" / "lipsync-data" / "occlusion" / "mouths.npz"
DEFAULT_MEDIA = (Path("../shared/media/train"), Path("../shared/media"))
# Training clips kept out of training to choose the schedule and report validation figures on (by identity).
DEFAULT_VAL = ("dfrf_cnn2_71s.mp4", "pcavs_vox2_pose_source_00473.mp4", "lipnet_grid_sbia1a.mpg")
# How often each occluder kind is drawn; the case (a flat patch of the face's own skin) most.
KIND_WEIGHTS = {"flat_skin": 0.2, "shaded_skin": 0.14, "hand": 0.16, "microphone": 0.12, "hair": 0.1,
                "glass": 0.1, "textured": 0.18}
COVER_WEIGHTS = {"full": 0.35, "part": 0.45, "near": 0.2}
# Share of training crops with an occluder (the rest are clean: a false alarm leaves a mouth un-synced).
OCCLUDED_SHARE = 0.6
# Weight of the pixels near an occluder's edge in the training loss.
EDGE_WEIGHT = 3.0
# A mouth is reported covered when this share of its lips is (the eval's and the service's flag).
FLAG_SHARE = 0.15


def build_net(widths: tuple[int, int, int] = (8, 16, 32)):
    """The occlusion U-Net: uint8 BGR crops [N, H, W, 3] in, occluder logits [N, 1, H, W] out.

    Three stride-2 levels (1/2, 1/4, 1/8 of the crop) and a fourth at 1/16, a global-average branch (a flat patch
    over the whole crop is told from skin only by what is missing where the lips should be), additive skips, the
    logits at half resolution upsampled bilinearly plus a learned full-resolution correction. About 51 k parameters,
    under 1 ms on one CPU core.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def up(t):
        # Every level is exactly half the one above (96x80 -> 6x5), so a fixed factor: the ONNX keeps static shapes.
        return F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)

    c1, c2, c3 = widths

    class OcclusionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e0 = cbr(3, c1, 2)
            # Depthwise + pointwise at the largest level: the same reach for a fraction of the cost.
            self.e1 = nn.Sequential(nn.Conv2d(c1, c1, 3, 1, 1, groups=c1, bias=False), nn.BatchNorm2d(c1),
                                    nn.Conv2d(c1, c1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
            self.e2 = nn.Sequential(cbr(c1, c2, 2), cbr(c2, c2))
            self.e3 = nn.Sequential(cbr(c2, c3, 2), cbr(c3, c3, dilation=2), cbr(c3, c3))
            self.e4 = nn.Sequential(cbr(c3, c3, 2), cbr(c3, c3))
            self.p4 = nn.Conv2d(c3, c3, 1)
            self.glob = nn.Conv2d(c3, c3, 1)
            self.p3 = nn.Conv2d(c3, c2, 1)
            self.d2 = cbr(c2, c2)
            self.p2 = nn.Conv2d(c2, c1, 1)
            self.d1 = cbr(c1, c1)
            self.head = nn.Conv2d(c1, 1, 1)
            # Sub-pixel detail: 4 logits per half-resolution pixel, one per full-resolution pixel (depth to space),
            # added to the upsampled logits; sharp corners and thin edges need it. Starts at zero.
            self.fine = nn.Conv2d(c1, 4, 1)
            nn.init.zeros_(self.fine.weight)
            nn.init.zeros_(self.fine.bias)

        def forward(self, crop):
            x = crop.permute(0, 3, 1, 2).float() * (1.0 / 255.0) - 0.5
            a = self.e1(self.e0(x))
            b = self.e2(a)
            c = self.e3(b)
            c = c + up(self.p4(self.e4(c)))
            c = c + self.glob(c.mean((2, 3), keepdim=True))
            u = self.d2(up(self.p3(c)) + b)
            u = self.d1(up(self.p2(u)) + a)
            return up(self.head(u)) + F.pixel_shuffle(self.fine(u), 2)

    torch.manual_seed(0)
    return OcclusionNet()


class Served:
    """The network as served: probabilities (sigmoid of the logits)."""

    @staticmethod
    def wrap(net):
        import torch
        from torch import nn

        class Probabilities(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, crop):
                return torch.sigmoid(self.net(crop))

        return Probabilities()


def _similarity(angle: float, scale: float, shift: np.ndarray, about: np.ndarray) -> np.ndarray:
    """3x3 similarity: rotate and scale about a point, then shift."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0, 0, 1.0]])
    m[:2, 2] = about - m[:2, :2] @ about + shift
    return m


class Synthesizer:
    """Training and validation crops from the cached mouths: occluders composited, the crop cut with a perturbed
    mesh, the camera varied.

    Args:
        crops: stored crops uint8 [N, h, w, 3] (occlusion_data).
        meshes: their meshes [N, 468, 2] in stored-crop pixels.
        patches: background patches [M, s, s, 3].
    """

    def __init__(self, crops: np.ndarray, meshes: np.ndarray, patches: np.ndarray) -> None:
        from lipsync_service.core.occlusion import CANON_H, CANON_W, CORNERS

        self.crops, self.meshes, self.patches = crops, meshes, patches
        self.size = (CANON_W, CANON_H)
        self.mouth_centre = np.array([(CORNERS[0][0] + CORNERS[1][0]) / 2, CORNERS[0][1]])
        self.mouth_width = CORNERS[1][0] - CORNERS[0][0]
        self.kinds = list(KIND_WEIGHTS)
        self.kind_p = np.array([KIND_WEIGHTS[k] for k in self.kinds])
        self.covers = list(COVER_WEIGHTS)
        self.cover_p = np.array([COVER_WEIGHTS[k] for k in self.covers])

    def occlude(self, rng: np.random.Generator, img: np.ndarray, mesh: np.ndarray, kind: str | None,
                cover: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """(BGR float32, label bool) of a stored crop with one or two occluders (kind None: random kinds)."""
        layers = []
        for _ in range(1 + int(kind is None and rng.random() < 0.15)):
            k = kind if kind is not None else self.kinds[rng.choice(len(self.kinds), p=self.kind_p)]
            c = cover if kind is not None else self.covers[rng.choice(len(self.covers), p=self.cover_p)]
            other = cv2.resize(self.crops[rng.integers(len(self.crops))], self.size, interpolation=cv2.INTER_AREA)
            layer = synth.render(k, rng, img, mesh, c, self.patches, other)
            if rng.random() < 0.12:
                layer = synth.motion_blur(layer, rng, synth.Mouth.of(mesh).width)
            layers.append(layer)
        out, label, _ = synth.composite(img, layers)
        return out, label

    def sample(self, rng: np.random.Generator, index: int | None = None, kind: str | None = "random",
               cover: str = "full", jitter: float = 1.0, camera: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One crop.

        Args:
            rng: random source.
            index: which cached mouth (random if None).
            kind: an occluder kind, None for clean, "random" for a random choice (clean or any kind).
            cover: with a given kind: 'full', 'part' or 'near'.
            jitter: scale of the mesh misalignment.
            camera: vary colour, blur, noise and compression.

        Returns:
            (crop uint8 [H, W, 3], label float32 [H, W] in [0, 1], lips bool [H, W]: the true outer-lip polygon).
        """
        i = int(rng.integers(len(self.crops))) if index is None else index
        if kind == "random":
            occluded, pick = bool(rng.random() < OCCLUDED_SHARE), None
        else:
            occluded, pick = kind is not None, kind
        # Stored pixels -> canonical, with the mesh's error: the crop is cut where a misread mesh puts the mouth.
        # Occluders are drawn after that, on the canonical crop, around the true lips (the mesh moved along).
        base = np.array([[1 / STORE_SCALE, 0, -MARGIN], [0, 1 / STORE_SCALE, -MARGIN], [0, 0, 1]])
        spread = jitter * (2.0 if occluded else 1.0)
        err = _similarity(math.radians(np.clip(rng.normal(0, 3 * spread), -15, 15)),
                          math.exp(np.clip(rng.normal(0, 0.05 * spread), -0.2, 0.2)),
                          np.clip(rng.normal(0, 0.03 * spread * self.mouth_width, 2), -0.15 * self.mouth_width,
                                  0.15 * self.mouth_width), self.mouth_centre)
        m = (err @ base)[:2]
        face8 = cv2.warpAffine(self.crops[i], m, self.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mesh = self.meshes[i].astype(np.float64) @ m[:, :2].T + m[:, 2]
        if camera and rng.random() < 0.1:
            face8 = np.clip(synth.lipstick(rng, face8, mesh) + 0.5, 0, 255).astype(np.uint8)
        if camera and rng.random() < 0.1:
            face8 = np.clip(synth.stubble(rng, face8, mesh) + 0.5, 0, 255).astype(np.uint8)
        if occluded:
            crop, label = self.occlude(rng, face8, mesh, pick, cover)
        else:
            crop, label = face8.astype(np.float32), np.zeros(face8.shape[:2], bool)
        lab = label.astype(np.float32)
        lips_canvas = np.zeros(self.size[::-1], np.uint8)
        lips_pts = mesh[list(synth.OUTER_LIPS)]
        cv2.fillPoly(lips_canvas, [np.round(lips_pts * 16).astype(np.int32)], (1,), cv2.LINE_8, 4)
        if camera:
            crop = self.camera(rng, crop)
        return np.clip(crop + 0.5, 0, 255).astype(np.uint8), lab, lips_canvas.astype(bool)

    @staticmethod
    def camera(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
        """Exposure, white balance, gamma, blur, low resolution, sensor noise and JPEG blocks."""
        h, w = crop.shape[:2]
        x = crop * rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, 3) + rng.uniform(-20, 20)
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(0.75, 1.35)
        if rng.random() < 0.3:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.3))
        if rng.random() < 0.2:
            f = rng.uniform(0.3, 0.7)
            small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
            x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.08:
            k = np.zeros((7, 7), np.float32)
            k[3] = 1.0
            m = cv2.getRotationMatrix2D((3, 3), rng.uniform(0, 180), 1.0)
            k = cv2.warpAffine(k, m, (7, 7))
            x = cv2.filter2D(x, -1, k / max(k.sum(), 1e-6))
        if rng.random() < 0.4:
            x = x + rng.normal(0, rng.uniform(1, 6), x.shape)
        x8 = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if rng.random() < 0.4:
            ok, buf = cv2.imencode(".jpg", x8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
            if ok:
                x8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return x8.astype(np.float32)


def load_cache(path: Path, val_clips: set[str]) -> tuple[dict, dict]:
    """The cached mouths split into (train, val) dicts of crops, meshes, patches by clip name."""
    data = np.load(path)
    names = [str(n) for n in data["names"]]
    val_ids = {k for k, n in enumerate(names) if n in val_clips}
    is_val = np.isin(data["clip"], list(val_ids))
    patches = data["patches"]
    split = {}
    for key, mask in (("train", ~is_val), ("val", is_val)):
        split[key] = {"crops": data["crops"][mask], "meshes": data["meshes"][mask], "patches": patches}
    return split["train"], split["val"]


def validation_set(val: dict, seed: int, per_kind: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed validation crops: clean ones, and per occluder kind ones over all or part of the lips."""
    syn = Synthesizer(val["crops"], val["meshes"], val["patches"])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(per_kind * 2):
        out.append(("clean", *syn.sample(rng, kind=None)))
    for kind in synth.KINDS:
        for n in range(per_kind):
            out.append((kind, *syn.sample(rng, kind=kind, cover="full" if n % 2 == 0 else "part")))
    return out


def evaluate(predict, samples: list) -> dict[str, dict[str, float]]:
    """Per kind: share flagged (share of the lips at COVER_CONFIDENCE or more >= FLAG_SHARE; occluded crops counted
    only when >= 30 % of the lips are covered), pooled IoU of mask >= 0.5 vs the label, and how many crops were
    counted."""
    crops = np.stack([s[1] for s in samples])
    probs = predict(crops)
    rows: dict[str, dict[str, float]] = {}
    for kind in ["clean", *synth.KINDS]:
        idx = [k for k, s in enumerate(samples) if s[0] == kind]
        flagged, inter, union, counted = [], 0.0, 0.0, 0
        for k in idx:
            _, _, lab, lips = samples[k]
            pred = probs[k] >= 0.5
            truth = lab >= 0.5
            inter += float((pred & truth).sum())
            union += float((pred | truth).sum())
            covered = float(truth[lips].mean()) if lips.any() else 0.0
            if kind != "clean" and covered < 0.3:
                continue
            counted += 1
            sure = probs[k] >= COVER_CONFIDENCE  # the service's rule for a covered mouth
            flagged.append(float(sure[lips].mean()) >= FLAG_SHARE if lips.any() else False)
        rows[kind] = {"flagged": float(np.mean(flagged)) if flagged else float("nan"), "n": counted,
                      "iou": inter / union if union else float("nan")}
    return rows


def print_rows(title: str, rows: dict[str, dict[str, float]]) -> None:
    """One line per kind."""
    print(title, flush=True)
    for kind, r in rows.items():
        print(f"  {kind:12s} n {r['n']:4d}  flagged {100 * r['flagged']:6.1f} %  IoU {r['iou']:.3f}", flush=True)


def _batches(train: dict, batch: int, seed: int):
    """Endless (crops, labels) batches, synthesized in a worker process."""
    import torch

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            rng = np.random.default_rng([seed, info.id if info else 0])
            syn = Synthesizer(train["crops"], train["meshes"], train["patches"])
            cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
            ring = np.ones((5, 5), np.uint8)
            while True:
                items = [syn.sample(rng) for _ in range(batch)]
                # The target is the occluder grown by one pixel: the mask errs towards covering its edge (an edited
                # occluder pixel shows; an unedited skin pixel beside it does not).
                targets = [cv2.dilate(lab, cross) for _, lab, _ in items]
                # Pixels within two of the target's edge weigh EDGE_WEIGHT times as much: they are few, and where
                # the mask's edge falls decides whether a patch's rim is kept.
                weights = [1 + (EDGE_WEIGHT - 1) * (cv2.dilate(t, ring) - cv2.erode(t, ring)) for t in targets]
                yield (torch.from_numpy(np.stack([c for c, _, _ in items])), torch.from_numpy(np.stack(targets)),
                       torch.from_numpy(np.stack(weights).astype(np.float32)))

    return iter(torch.utils.data.DataLoader(Stream(), batch_size=None, num_workers=1, persistent_workers=True,
                                            prefetch_factor=4))


def train(train_set: dict, val: list, steps: int, batch: int, lr: float, seed: int, log_every: int = 500,
          snapshot=None):
    """Fit the network: BCE (edges weighted) plus soft Dice on the occluder mask, AdamW, one-cycle schedule;
    `snapshot(net, step)` is called at every log line but the last (the run keeps its latest weights on disk)."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    stream = _batches(train_set, batch, seed)
    t0 = time.time()
    running, count = 0.0, 0
    for step in range(1, steps + 1):
        net.train()
        crops, labels, weights = next(stream)
        logits = net(crops)[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, labels, weight=weights)
        p = torch.sigmoid(logits)
        inter = (p * labels).sum((1, 2))
        dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + labels.sum((1, 2)) + 1)
        loss = bce + 0.5 * dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        count += 1
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {running / count:.4f} ({time.time() - t0:.0f} s)", flush=True)
            running, count = 0.0, 0
            if val:
                print_rows("validation", evaluate(lambda c: predict(net, c), val))
            if snapshot is not None and step < steps:
                snapshot(net, step)
    return net


def predict(net, crops: np.ndarray) -> np.ndarray:
    """Probabilities [N, H, W] of a batch of uint8 crops."""
    import torch

    net.eval()
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(crops))[:, 0]).numpy()


def export(net, out: Path, check: np.ndarray) -> float:
    """Write the served ONNX (uint8 crop [N, H, W, 3] -> occluder probability [N, 1, H, W]); returns the largest
    difference from torch on `check` crops."""
    import onnxruntime as ort
    import torch

    from lipsync_service.core.occlusion import CANON_H, CANON_W, INPUT_NAME, OUTPUT_NAME

    served = Served.wrap(net).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, CANON_H, CANON_W, 3, dtype=torch.uint8)
    torch.onnx.export(served, (dummy,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: check})[0][:, 0]
    return float(np.abs(got - predict(net, check)).max())


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command's arguments (shared by `lipsync-service train occlusion` and `python -m`)."""
    ap.add_argument("out", type=Path, help="output folder (occlusion.pt, occlusion.onnx)")
    ap.add_argument("--media", type=Path, action="append", default=None,
                    help="folder of training clips (repeatable; default ../shared/media/train and ../shared/media); "
                    "held-out identities are skipped")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help=f"the mouths read from the clips (built when missing; default {DEFAULT_CACHE})")
    ap.add_argument("--per-clip", type=int, default=160, help="frames sampled per clip when building the cache")
    ap.add_argument("--val-clip", action="append", default=None,
                    help=f"training clip kept for validation (repeatable; default {', '.join(DEFAULT_VAL)}; "
                    "'none' trains on all)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-per-kind", type=int, default=64, help="validation crops per occluder kind")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the network (one more process "
                    "synthesizes the crops; on 2 shared cores a second thread made each step 10x slower)")


def run(args: argparse.Namespace) -> Path:
    """Build the cache if needed, train, report validation figures, export; returns the ONNX path."""
    import torch

    from lipsync_models.training.occlusion_data import build_cache

    torch.set_num_threads(args.threads)
    if not args.cache.exists():
        media = args.media or list(DEFAULT_MEDIA)
        build_cache(media, args.cache, per_clip=args.per_clip, seed=args.seed,
                    progress=lambda line: print(line, flush=True))
    val_clips = set(args.val_clip or DEFAULT_VAL) - {"none"}
    train_set, val_set = load_cache(args.cache, val_clips)
    if not len(train_set["crops"]):
        raise ValueError(f"no training mouths in {args.cache}")
    print(f"{len(train_set['crops'])} training mouths, {len(val_set['crops'])} validation mouths "
          f"({', '.join(sorted(val_clips)) or 'none'})", flush=True)
    val = validation_set(val_set, args.seed + 1, args.val_per_kind) if len(val_set["crops"]) else []
    args.out.mkdir(parents=True, exist_ok=True)
    check = np.stack([s[1] for s in val[:64]]) if val else np.zeros((1, 80, 96, 3), np.uint8)
    out = args.out / "occlusion.onnx"

    def snapshot(net, step: int) -> None:
        torch.save(net.state_dict(), args.out / "occlusion.pt")
        export(net, out, check)

    t0 = time.time()
    net = train(train_set, val, args.steps, args.batch, args.lr, args.seed, snapshot=snapshot)
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    torch.save(net.state_dict(), args.out / "occlusion.pt")
    error = export(net, out, check)
    params = sum(p.numel() for p in net.parameters())
    print(f"onnx {out.stat().st_size / 1e3:.0f} kB, {params} parameters, max |onnx - torch| {error:.1e}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    add_arguments(ap)
    print(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
