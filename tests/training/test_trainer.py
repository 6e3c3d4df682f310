"""Training loop on tiny synthetic data: losses fall, checkpoints resume exactly, configs are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lipsync_models.training.trainer import TrainConfig, Trainer, load_config  # noqa: E402


def tiny_config(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache_dir=str(cache), out_dir=str(out), threads=1, device="cpu", expert_steps=0, gen_steps=0,
                expert_batch=8, gen_batch=2, expert_width=8, gen_width=8, audio_dim=16, disc_width=8,
                checkpoint_every=1000, log_every=1000, val_every=1000, val_batches=1)
    base.update(kw)
    return TrainConfig(**base)


def test_generator_l1_falls(synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(synthetic_cache, tmp_path / "run", gen_steps=200, gen_lr=5e-4, gen_batch=4, val_batches=2,
                      gen_width=16, audio_dim=32, audio_render_end=150, sync_weight=0.0, adv_weight=0.0)
    trainer = Trainer(cfg)
    before = trainer.validate()
    losses = [trainer.step()["l1"] for _ in range(200)]
    after = trainer.validate()
    # Served from the audio alone, the mouth of an unseen face is drawn closer to the truth ...
    assert after["val_l1"] < 0.9 * before["val_l1"]
    # ... because the speech now drives it: swapping the speech changes the mouth.
    assert after["val_audio_effect"] > 10 * before["val_audio_effect"]
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20])


def test_expert_loss_falls(synthetic_cache: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(synthetic_cache, tmp_path / "run", expert_steps=40, expert_lr=2e-3))
    losses = [trainer.step()["expert_loss"] for _ in range(40)]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_resume_reproduces_next_step_exactly(synthetic_cache: Path, tmp_path: Path) -> None:
    # Expert then generator with every loss on, so all optimizers and random generators are in play.
    cfg = tiny_config(synthetic_cache, tmp_path / "run", expert_steps=2, gen_steps=4, sync_weight=0.1,
                      adv_weight=0.1)
    first = Trainer(cfg)
    for _ in range(4):
        first.step()
    first.save(tmp_path / "ckpt.pt")
    expected = [first.step() for _ in range(2)]

    second = Trainer(cfg)
    second.load(tmp_path / "ckpt.pt")
    got = [second.step() for _ in range(2)]
    assert got == expected
    for a, b in zip(first.generator.state_dict().values(), second.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_run_resumes_from_checkpoint_and_writes_log(synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config(synthetic_cache, tmp_path / "run", expert_steps=2, gen_steps=3, checkpoint_every=1)
    Trainer(cfg).run(max_steps=3, progress=False)
    final = Trainer(cfg).run(progress=False)  # picks up at step 3
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert final.exists()
    assert "val_l1" in records[-1]


def test_config_file_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[run]\ncache_dir = "~/c"\nout_dir = "o"\n[expert]\nsteps = 7\n[generator]\nlr = 0.1\n'
                    '[losses]\nsync_weight = 0.2\n[augment]\nflip = 0.0\n')
    cfg = load_config(good)
    assert (cfg.expert_steps, cfg.gen_lr, cfg.sync_weight, cfg.augment.flip) == (7, 0.1, 0.2, 0.0)
    assert not cfg.cache_dir.startswith("~")
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\ncache_dir = "c"\nout_dir = "o"\n[generator]\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(bad)


def test_repository_configs_parse() -> None:
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
    assert configs, "configs/ holds no training config: the loop below would check nothing"
    for path in configs:
        load_config(path)
