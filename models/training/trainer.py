"""The training loop: SyncNet-style expert first, then the generator with L1, sync and adversarial losses.

One `Trainer` owns every network, optimizer and random generator of a run; `save`/`load` capture all
of them so a resumed run takes exactly the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency of the train extra there)
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lipsync_models.training.augment import AugmentConfig, augment
from lipsync_models.training.data import Batch, WindowSampler, load_clips
from lipsync_models.training.syncnet import SyncExpertConfig
from lipsync_models.training.warpnet import WarpGeneratorConfig

CHECKPOINT = "checkpoint.pt"
GENERATOR = "generator.pt"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    """Everything a run needs; read from a TOML file by `load_config`.

    Attributes:
        cache_dir: prepared data (`train prepare` output).
        out_dir: checkpoints, the loss log and the final weights go here.
        seed: seeds every random generator of the run.
        threads: CPU threads for torch.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        face_size: S.
        frames: T, frames per window (the expert's input length).
        expert_steps, expert_batch, expert_lr, expert_width: the sync expert's training.
        gen_steps, gen_batch, gen_lr: the generator's training (batch counts windows of T frames).
        gen_width, audio_dim, max_flow: the generator's size (WarpGeneratorConfig).
        disc_width, disc_lr: the discriminator.
        sync_weight, adv_weight: loss weights (L1 has weight 1); sync_start: generator steps before
            the sync loss is switched on.
        mouth_weight: extra L1 weight on the mouth area over the rest of the lower half.
        ref_max_gap: references from within this many frames of the target window (0: anywhere).
        one_clip_batches: every generator batch comes from one clip, so the mouth code, whitened over
            the batch, describes the mouth relative to that person's own range (per-clip normalisation),
            not who the person is; the speech can predict the former, and only memorise the latter.
        code_dim: size of the mouth code (the bottleneck between speech and renderer).
        code_weight: weight of the audio encoder's regression onto the mouth encoder's code.
        audio_render_start, audio_render_end, audio_render_max: the share of samples rendered from the
            audio's code instead of the mouth encoder's rises linearly from 0 at generator step
            audio_render_start to audio_render_max at audio_render_end.
        checkpoint_every, log_every, val_every: in steps.
        val_batches: fixed validation batches (held-out identities) scored at every val_every.
        augment: augmentation ranges.
    """

    cache_dir: str
    out_dir: str
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    face_size: int = 96
    frames: int = 5
    expert_steps: int = 1500
    expert_batch: int = 32
    expert_lr: float = 1e-3
    expert_width: int = 32
    gen_steps: int = 3000
    gen_batch: int = 8
    gen_lr: float = 5e-4
    gen_width: int = 32
    audio_dim: int = 64
    max_flow: float = 0.08
    disc_width: int = 32
    disc_lr: float = 2e-4
    sync_weight: float = 0.05
    adv_weight: float = 0.01
    sync_start: int = 0
    mouth_weight: float = 3.0
    ref_max_gap: int = 0
    one_clip_batches: bool = False
    code_dim: int = 4
    code_weight: float = 1.0
    audio_render_start: int = 0
    audio_render_end: int = 1000
    audio_render_max: float = 0.5
    checkpoint_every: int = 200
    log_every: int = 20
    val_every: int = 250
    val_batches: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def total_steps(self) -> int:
        return self.expert_steps + self.gen_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: Path, **overrides: Any) -> TrainConfig:
    """Read a training config from TOML.

    The file has a `[run]` table and optional `[expert]`, `[generator]`, `[augment]` tables; keys of
    `[expert]` are prefixed `expert_` and of `[generator]` `gen_` unless they already name a field.

    Args:
        path: the TOML file.
        overrides: values that replace the file's (e.g. out_dir from the command line).

    Returns:
        the config.

    Raises:
        ValueError: an unknown key, with its name.
    """
    raw = tomllib.loads(Path(path).read_text())
    names = {f.name for f in fields(TrainConfig)}
    flat: dict[str, Any] = {}
    for table, prefix in (("run", ""), ("expert", "expert_"), ("generator", "gen_"), ("losses", "")):
        for key, value in raw.get(table, {}).items():
            name = key if key in names else prefix + key
            if name not in names:
                raise ValueError(f"{path}: unknown key [{table}] {key}")
            flat[name] = value
    unknown = set(raw) - {"run", "expert", "generator", "losses", "augment"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}")
    aug = raw.get("augment", {})
    bad = set(aug) - {f.name for f in fields(AugmentConfig)}
    if bad:
        raise ValueError(f"{path}: unknown keys in [augment]: {sorted(bad)}")
    flat.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("cache_dir", "out_dir"):
        if key in flat:
            flat[key] = os.path.expanduser(str(flat[key]))
    return TrainConfig(**flat, augment=AugmentConfig(**aug))


def _mouth_weights(size: int, mouth_weight: float) -> np.ndarray:
    """[1, 1, S, S] L1 weights: 0 on the copied upper half, 1 + a bump around the mouth below."""
    ys = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(ys, ys, indexing="ij")
    bump = np.exp(-((xx - 0.5) ** 2 / (2 * 0.16**2) + (yy - 0.74) ** 2 / (2 * 0.1**2)))
    w = (1 + mouth_weight * bump) * (yy >= 0.5)
    return (w / w.mean()).astype(np.float32)[None, None]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


class Trainer:
    """A training run; see the module docstring."""

    def __init__(self, config: TrainConfig) -> None:
        """Build networks, optimizers and samplers (loads the cache).

        Raises:
            FileNotFoundError: the cache is missing.
            ValueError: the cache holds no usable training clip.
        """
        import torch

        from lipsync_models.training.discriminator import build_discriminator
        from lipsync_models.training.syncnet import build_sync_expert
        from lipsync_models.training.warpnet import build_mouth_encoder, build_warp_generator

        self.torch = torch
        self.config = c = config
        torch.set_num_threads(c.threads)
        if c.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(c.device)
        torch.manual_seed(c.seed)
        self.expert = build_sync_expert(SyncExpertConfig(c.face_size, c.frames, c.expert_width)).to(self.device)
        self.gen_config = WarpGeneratorConfig(c.face_size, c.gen_width, c.audio_dim, c.max_flow, c.code_dim)
        self.generator = build_warp_generator(self.gen_config).to(self.device)
        self.mouth_encoder = build_mouth_encoder(self.gen_config).to(self.device)
        self.disc = build_discriminator(c.disc_width).to(self.device)
        self.expert_opt = torch.optim.Adam(self.expert.parameters(), lr=c.expert_lr)
        self.gen_opt = torch.optim.Adam([*self.generator.parameters(), *self.mouth_encoder.parameters()],
                                        lr=c.gen_lr, betas=(0.5, 0.999))
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=c.disc_lr, betas=(0.5, 0.999))
        self.rng = np.random.default_rng(c.seed)
        self.aug_gen = torch.Generator().manual_seed(c.seed + 1)
        self.step_count = 0
        self.sampler = WindowSampler(load_clips(Path(c.cache_dir), "train"), c.frames, ref_max_gap=c.ref_max_gap)
        val_clips = load_clips(Path(c.cache_dir), "val")
        self.val: list[Batch] = []
        if val_clips and c.val_batches:
            val_rng = np.random.default_rng(c.seed + 12345)
            val_sampler = WindowSampler(val_clips, c.frames, ref_max_gap=c.ref_max_gap)
            self.val = [val_sampler.sample(val_rng, c.gen_batch) for _ in range(c.val_batches)]
        self.weights = torch.from_numpy(_mouth_weights(c.face_size, c.mouth_weight)).to(self.device)

    # -- tensors -------------------------------------------------------------------------------

    def _images(self, array: np.ndarray):
        """uint8 [B, T, S, S, 3] -> float [B, T, 3, S, S] in [0, 1] (BGR kept)."""
        return self.torch.from_numpy(array).permute(0, 1, 4, 2, 3).float() / 255.0

    def _lower(self, x):
        """[B, T, 3, S, S] -> the expert's input [B, 3T, S/2, S]."""
        b, t, c, s, _ = x.shape
        return x[:, :, :, s // 2:, :].reshape(b, t * c, s // 2, s)

    def _face_input(self, target, reference):
        """Windows -> the generator's face input [B*T, 6, S, S] (target's lower half zeroed)."""
        b, t, c, s, _ = target.shape
        masked = target.clone()
        masked[..., s // 2:, :] = 0
        return self.torch.cat((masked, reference), 2).reshape(b * t, 2 * c, s, s)

    def _generate(self, target, reference, mel):
        """Run the generator as served (code from the audio) on windows: returns [B, T, 3, S, S]."""
        out = self.generator(self._face_input(target, reference), mel.reshape(-1, 1, *mel.shape[2:]))
        return out.reshape(target.shape)

    def audio_render_share(self) -> float:
        """Share of samples rendered from the audio's code at the current generator step."""
        c = self.config
        g = self.step_count - c.expert_steps
        span = max(1, c.audio_render_end - c.audio_render_start)
        return float(np.clip((g - c.audio_render_start) / span, 0.0, 1.0) * c.audio_render_max)

    # -- steps ---------------------------------------------------------------------------------

    def _expert_step(self, batch: Batch) -> dict[str, float]:
        torch = self.torch
        F = torch.nn.functional
        self.expert.train()
        target, _ = augment(self._images(batch.target), self._images(batch.reference), self.config.augment,
                            self.aug_gen)
        lower = self._lower(target).to(self.device)
        mel_pos = torch.from_numpy(batch.mel[:, 0:1]).to(self.device)
        mel_neg = torch.from_numpy(batch.wrong_mel[:, None]).to(self.device)
        logits = self.expert(torch.cat((lower, lower)), torch.cat((mel_pos, mel_neg)))
        labels = torch.cat((torch.ones(len(lower)), torch.zeros(len(lower)))).to(self.device)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.expert_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.expert_opt.step()
        acc = ((logits > 0).float() == labels).float().mean()
        return {"expert_loss": float(loss.detach()), "expert_acc": float(acc)}

    def _gen_step(self, batch: Batch) -> dict[str, float]:
        torch = self.torch
        F = torch.nn.functional
        c = self.config
        self.generator.train()
        self.mouth_encoder.train()
        self.expert.eval()
        for p in self.expert.parameters():
            p.requires_grad_(False)
        target, reference = augment(self._images(batch.target), self._images(batch.reference), c.augment,
                                    self.aug_gen)
        target, reference = target.to(self.device), reference.to(self.device)
        mel = torch.from_numpy(batch.mel).to(self.device)
        b, t, ch, s, _ = target.shape
        flat = target.reshape(b * t, ch, s, s)
        code_true = self.mouth_encoder(flat[:, :, s // 2:])
        code_audio = self.generator.audio_code(mel.reshape(b * t, 1, *mel.shape[2:]))
        # Teacher forcing: most samples use the code of the true mouth, so the renderer learns to obey
        # the code; a growing share uses the audio's code, so the renderer also sees what it gets served.
        use_audio = (torch.rand(b * t, 1, generator=self.aug_gen) < self.audio_render_share()).float().to(self.device)
        code = use_audio * code_audio + (1 - use_audio) * code_true
        out = self.generator.render(self._face_input(target, reference), code).reshape(b, t, ch, s, s)
        l1 = ((out - target).abs() * self.weights).mean()
        code_loss = (code_audio - code_true.detach()).pow(2).mean()
        losses = {"l1": l1, "code": code_loss}
        total = l1 + c.code_weight * code_loss
        gen_step = self.step_count - c.expert_steps
        if c.sync_weight > 0 and gen_step >= c.sync_start:
            logits = self.expert(self._lower(out), mel[:, 0:1])
            sync = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            losses["sync"] = sync
            total = total + c.sync_weight * sync
        fake_lower = out.reshape(b * t, ch, s, s)[:, :, s // 2:]
        if c.adv_weight > 0:
            adv = F.softplus(-self.disc(fake_lower)).mean()
            losses["adv"] = adv
            total = total + c.adv_weight * adv
        self.gen_opt.zero_grad(set_to_none=True)
        total.backward()
        self.gen_opt.step()
        if c.adv_weight > 0:
            real_lower = target.reshape(b * t, ch, s, s)[:, :, s // 2:]
            d_loss = F.softplus(-self.disc(real_lower)).mean() + F.softplus(self.disc(fake_lower.detach())).mean()
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            losses["disc"] = d_loss
        out_d = {k: float(v.detach()) for k, v in losses.items()}
        out_d["total"] = float(total.detach())
        return out_d

    def step(self) -> dict[str, float]:
        """Take one training step (expert or generator, by position in the schedule).

        Returns:
            the step's losses as floats, plus "phase".
        """
        c = self.config
        if self.step_count < c.expert_steps:
            batch = self.sampler.sample(self.rng, c.expert_batch)
            result: dict[str, Any] = self._expert_step(batch)
            result["phase"] = "expert"
        else:
            batch = self.sampler.sample(self.rng, c.gen_batch, one_clip=c.one_clip_batches)
            result = self._gen_step(batch)
            result["phase"] = "generator"
        self.step_count += 1
        result["step"] = self.step_count
        return result

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Scores on the fixed held-out batches (no augmentation).

        Returns:
            val_l1 (weighted lower-half L1), val_sync (expert's mean in-sync probability of the
            generated windows), val_audio_effect (mean lower-half change when the speech is swapped
            between samples: 0 would mean the audio is ignored), val_code_r (Pearson correlation between
            the audio's code and the true mouth's code, first component). Empty without validation data.
        """
        if not self.val:
            return {}
        torch = self.torch
        self.generator.eval()
        self.mouth_encoder.eval()
        self.expert.eval()
        l1s, syncs, effects, codes_a, codes_t = [], [], [], [], []
        with torch.no_grad():
            for batch in self.val:
                target = self._images(batch.target).to(self.device)
                reference = self._images(batch.reference).to(self.device)
                mel = torch.from_numpy(batch.mel).to(self.device)
                out = self._generate(target, reference, mel)
                l1s.append(float(((out - target).abs() * self.weights).mean()))
                syncs.append(float(torch.sigmoid(self.expert(self._lower(out), mel[:, 0:1])).mean()))
                swapped = self._generate(target, reference, mel.roll(1, dims=0))
                s = out.shape[-1]
                effects.append(float((out - swapped)[..., s // 2:, :].abs().mean()))
                flat = target.reshape(-1, *target.shape[2:])
                codes_t.append(self.mouth_encoder(flat[:, :, s // 2:]).cpu().numpy())
                codes_a.append(self.generator.audio_code(mel.reshape(-1, 1, *mel.shape[2:])).cpu().numpy())
        return {"val_l1": float(np.mean(l1s)), "val_sync": float(np.mean(syncs)),
                "val_audio_effect": float(np.mean(effects)),
                "val_code_r": _pearson(np.concatenate(codes_a)[:, 0], np.concatenate(codes_t)[:, 0])}

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizers, random generators, step."""
        torch = self.torch
        return {
            "config": self.config.to_dict(),
            "step": self.step_count,
            "expert": self.expert.state_dict(),
            "generator": self.generator.state_dict(),
            "mouth_encoder": self.mouth_encoder.state_dict(),
            "disc": self.disc.state_dict(),
            "expert_opt": self.expert_opt.state_dict(),
            "gen_opt": self.gen_opt.state_dict(),
            "disc_opt": self.disc_opt.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "augment_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (a crash mid-write leaves the previous one intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        self.torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Restore a checkpoint written by `save` into this trainer."""
        state = self.torch.load(Path(path), map_location=self.device, weights_only=False)
        self.expert.load_state_dict(state["expert"])
        self.generator.load_state_dict(state["generator"])
        self.mouth_encoder.load_state_dict(state["mouth_encoder"])
        self.disc.load_state_dict(state["disc"])
        self.expert_opt.load_state_dict(state["expert_opt"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.aug_gen.set_state(state["augment_rng"])
        self.torch.set_rng_state(state["torch_rng"])
        self.step_count = int(state["step"])

    def save_generator(self, path: Path) -> None:
        """Write the generator's weights and config alone (what export needs)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.torch.save({"kind": "warp_generator", "config": self.gen_config.to_dict(),
                         "state_dict": self.generator.state_dict(), "step": self.step_count}, path)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, max_steps: int | None = None, progress: bool = True) -> Path:
        """Train to the end of the schedule (or max_steps more steps), checkpointing on the way.

        Resumes from out_dir/checkpoint.pt when it exists. Losses go to out_dir/log.jsonl, a
        progress line to stderr.

        Args:
            max_steps: stop after this many steps of this call (None: to the end).
            progress: print the progress line.

        Returns:
            path of the final generator weights (out_dir/generator.pt), written when the schedule ends.
        """
        c = self.config
        out = Path(c.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / CHECKPOINT
        if ckpt.exists() and self.step_count == 0:
            self.load(ckpt)
        (out / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        end = c.total_steps if max_steps is None else min(c.total_steps, self.step_count + max_steps)
        started, first = time.monotonic(), self.step_count
        running: dict[str, float] = {}
        with open(out / LOG, "a") as log:
            while self.step_count < end:
                result = self.step()
                for k, v in result.items():
                    if isinstance(v, float):
                        running[k] = 0.9 * running.get(k, v) + 0.1 * v
                record = {**result, "time": round(time.time(), 3)}
                val_due = self.step_count % c.val_every == 0 or self.step_count == c.total_steps
                if val_due and self.step_count > c.expert_steps:
                    record.update(self.validate())
                log.write(json.dumps(record) + "\n")
                if self.step_count % c.checkpoint_every == 0 or self.step_count == end:
                    log.flush()
                    self.save(ckpt)
                if progress and (self.step_count % c.log_every == 0 or self.step_count == end):
                    rate = (self.step_count - first) / max(1e-9, time.monotonic() - started)
                    eta = (c.total_steps - self.step_count) / max(rate, 1e-9)
                    shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(running.items()))
                    vals = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("val_"))
                    print(f"[{result['phase']}] step {self.step_count}/{c.total_steps} "
                          f"{rate:.2f} it/s eta {math.ceil(eta / 60)} min  {shown} {vals}",
                          file=sys.stderr, flush=True)
        final = out / GENERATOR
        if self.step_count >= c.total_steps:
            self.save_generator(final)
        return final
