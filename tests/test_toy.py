"""The SF-V miniature (sfv_core.toy): synthetic data, the FVD-proxy metric, a smoke of the runner."""

import json

import numpy as np
import pytest
import torch

from sfv_core.toy import data, metric

torch.set_num_threads(1)


def test_data_is_deterministic_and_split():
    a = data.generate_split("train", 4, num_frames=6, size=32)
    b = data.generate_split("train", 4, num_frames=6, size=32)
    held = data.generate_split("heldout", 4, num_frames=6, size=32)
    assert a.shape == (4, 6, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # Held-out clips come from a different seed stream: none equals a training clip.
    assert not any(np.array_equal(h, t) for h in held for t in a)
    # Clips move: consecutive frames differ, and clips differ from each other.
    assert all((clip[1:] != clip[:-1]).any() for clip in a)
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError):
        data.generate_clip("test", 0)


def test_frame_folders(tmp_path):
    clips = data.generate_split("train", 2, num_frames=3, size=16)
    root = data.write_frame_folders(clips, tmp_path / "train")
    assert sorted(p.name for p in root.iterdir()) == ["clip00000", "clip00001"]
    assert len(list((root / "clip00001").glob("*.png"))) == 3


def test_metric_zero_positive_ordered_and_seeded():
    real = data.to_float(data.generate_split("heldout", 16, num_frames=4, size=32))
    other = data.to_float(data.generate_split("train", 16, num_frames=4, size=32))
    frozen = real[:, :1].expand_as(real).contiguous()  # no motion at all
    noisy = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert metric.video_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    near, far_frozen, far_noisy = (metric.video_distance(real, x) for x in (other, frozen, noisy))
    assert 0 < near < far_frozen and near < far_noisy
    assert metric.video_distance(real, frozen) == far_frozen  # deterministic given the seed
    assert metric.video_distance(real, frozen, seed=7) != far_frozen
    assert metric.motion(frozen) == 0.0 and metric.motion(real) > 0


def test_guided_sampler_matches_plain_one_step_at_unit_guidance():
    from sfv_core import sampling
    from sfv_core.models import TINY, build_unet
    from sfv_core.toy.experiment import sample_guided

    torch.manual_seed(0)
    unet = build_unet(TINY.unet).train(False)
    g = torch.Generator().manual_seed(0)
    cond = sampling.Conditioning(torch.randn(2, 1, 32, generator=g), torch.randn(2, 4, 8, 8, generator=g), torch.tensor([[6.0, 127, 0.02]] * 2), 3)
    plain = sampling.sample(unet, cond, sampling.seeded_generator(5), steps=1)
    guided = sample_guided(unet, cond, sampling.seeded_generator(5), steps=1, guidance=(1.0, 1.0))
    torch.testing.assert_close(guided, plain, atol=1e-4, rtol=1e-4)


def test_experiment_smoke(tmp_path):
    from sfv_core.toy.experiment import ToyConfig, run

    cfg = ToyConfig(num_frames=4, train_clips=4, heldout_clips=4, vae_steps=1, pretrain_steps=1, pretrain_batch=2,
                    distill_steps=1, distill_batch=1, teacher_steps=2, threads=1, variants=("both",), recipes=("paper", "control", "lora8"),
                    teacher="train")
    results = run(tmp_path, cfg)
    names = [r["method"] for r in results["rows"]]
    assert names[1].startswith("teacher, 2 steps") and "SF-V, 4 steps" in names and "control: adversarial weight 0, 1 step" in names
    assert "SF-V LoRA rank 8, 1 step" in names and any("LoRA rank 8 1 step <= 1.5 x" in bar for bar in results["bars"])
    assert (tmp_path / "sfv_lora8" / "export" / "sfv_lora.safetensors").is_file()
    assert any("beats the control" in bar for bar in results["bars"])
    assert all(np.isfinite(r["fvd_proxy"]) and r["seconds_per_clip"] > 0 for r in results["rows"])
    for name in ("results.json", "table.md", "quality_vs_time.png", "samples.png"):
        assert (tmp_path / name).is_file()

    # --ship: the SF-V model as an fp16 single file the engine loads, and a held-out start frame.
    from sfv_core.checkpoints import load_model
    from sfv_core.toy.experiment import TOY_CONFIGS, ship

    checkpoint, image, teacher = ship(results, tmp_path / "assets")
    shipped = load_model(checkpoint)
    assert shipped.unet.config.block_out_channels == TOY_CONFIGS.unet["block_out_channels"]
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert image.is_file()
    # A run that trained its teacher ships it too: fp32, the settings that made it in its metadata.
    from sfv_core.toy.experiment import TEACHER_METADATA

    with safe_open(str(teacher), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
        settings = json.loads(f.metadata()[TEACHER_METADATA])
    assert settings["num_frames"] == 4 and settings["pretrain_steps"] == 1 and settings["seed"] == 0

    # A run from a shipped teacher encodes the cache itself: the same cache the teacher's trainer built.
    from safetensors.torch import load_file
    from sfv_core.toy.experiment import encode_latent_cache

    encode_latent_cache(cfg, tmp_path / "teacher" / "export" / "sfv_svd_single_file.safetensors", tmp_path / "data" / "train", tmp_path / "again" / "latent_cache")
    made_by_trainer = sorted((tmp_path / "latent_cache").glob("*.safetensors"))
    assert made_by_trainer and [p.name for p in made_by_trainer] == sorted(p.name for p in (tmp_path / "again" / "latent_cache").glob("*.safetensors"))
    for shard in made_by_trainer:
        ours, theirs = load_file(str(tmp_path / "again" / "latent_cache" / shard.name)), load_file(str(shard))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_experiment_from_the_shipped_teacher(tmp_path):
    """The default: the SF-V stages start from the toy SVD in sfv_core/assets, copied into the run."""
    import dataclasses
    import filecmp

    from sfv_core.assets import TOY_TEACHER
    from sfv_core.toy.experiment import ToyConfig, run

    cfg = dataclasses.replace(ToyConfig.quick(), teacher="shipped", train_clips=4, heldout_clips=4, threads=1, variants=("both",),
                              recipes=("paper",), extra_rows=False)
    results = run(tmp_path, cfg)
    assert filecmp.cmp(tmp_path / "teacher" / "export" / "sfv_svd_single_file.safetensors", TOY_TEACHER, shallow=False)
    assert {"data", "latent_cache", "sfv_both"} <= set(results["timings_s"]) and not {"vae", "teacher"} & set(results["timings_s"])
    assert results["teacher_settings"]["pretrain_steps"] == 1000 and not (tmp_path / "base.safetensors").exists()
    assert [r["method"] for r in results["rows"]][-1] == "SF-V, 1 step"


def test_experiment_refuses_a_missing_or_foreign_teacher_file(tmp_path, monkeypatch, capsys):
    import sfv_core.assets
    from sfv_core.toy.experiment import main

    for path, message in ((tmp_path / "gone.safetensors", "is missing"), (sfv_core.assets.TOY_CHECKPOINT, "is not the miniature's teacher"),
                          (sfv_core.assets.TOY_START_IMAGE, "is not the miniature's teacher")):
        monkeypatch.setattr(sfv_core.assets, "TOY_TEACHER", path)
        with pytest.raises(SystemExit) as exit_info:
            main(["--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "--set teacher=train" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("pairs, message", [
    (["pretrain_steps=10"], "--set pretrain_steps=10: trains the teacher, which teacher=shipped does not; add teacher=train"),
    (["num_frames=4"], "the shipped teacher was trained at other settings: num_frames=4 (the teacher's: 8)"),
    (["sweep_teacher=each"], "sweep_teacher=each trains a teacher per seed: add --set teacher=train"),
    (["teacher=own"], "teacher is 'shipped'"),
])
def test_experiment_refuses_what_contradicts_the_shipped_teacher(pairs, message, tmp_path, capsys):
    from sfv_core.toy.experiment import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "run"), "--set", *pairs])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_quick_run_never_ships(tmp_path, capsys):
    from sfv_core.assets import TOY_TEACHER
    from sfv_core.toy.experiment import main

    before = TOY_TEACHER.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--ship", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "run it without --quick" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and TOY_TEACHER.stat().st_mtime_ns == before


def test_latent_scale_calibration_is_exact():
    """After calibration the posterior means have std 1 / scaling_factor (model-space std 1) and
    the decoder gives the same images from the rescaled latents."""
    from sfv_core.models import TINY, build_vae
    from sfv_core.toy.experiment import calibrate_latent_scale, to_vae_input

    torch.manual_seed(0)
    vae = build_vae(TINY.vae).train(False)
    frames = to_vae_input(data.to_float(data.generate_split("train", 2, num_frames=3, size=32)))
    with torch.no_grad():
        before = vae.encode(frames).latent_dist
        decoded_before = vae.decode(before.mean, num_frames=3).sample
        k = calibrate_latent_scale(vae, frames)
        after = vae.encode(frames).latent_dist
        decoded_after = vae.decode(after.mean, num_frames=3).sample
    assert k != pytest.approx(1.0)
    assert float(after.mean.std()) == pytest.approx(1 / vae.config.scaling_factor, rel=1e-4)
    torch.testing.assert_close(after.mean, before.mean * k, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after.std, before.std * k, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded_after, decoded_before, atol=1e-4, rtol=1e-4)


def test_ssim_matches_its_definition_points():
    from sfv_core.toy.metric import ssim

    frames = torch.rand(2, 3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    noisy = (frames + 0.1 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim(frames, frames) == pytest.approx(1.0, abs=1e-6)
    assert 0.3 < ssim(noisy, frames) < ssim((frames + noisy) / 2, frames) < 1.0
    assert ssim(frames * 0.0 + 0.5, frames) < 0.1  # structure gone


def test_tiny_decoder_miniature_smoke(tmp_path, monkeypatch):
    import sfv_core.assets
    from sfv_core import tiny_decoder
    from sfv_core.toy.decoder import ToyDecoderConfig, run, ship

    results = run(tmp_path, ToyDecoderConfig(train_clips=2, heldout_clips=3, steps=1, batch_clips=1, threads=1))
    assert [r["method"] for r in results["rows"]][:2] == ["SF-V 1 step + full decoder", "SF-V 1 step + tiny decoder"]
    assert all(r["decode_seconds_per_clip"] > 0 for r in results["rows"][:2]) and all(r["decode_seconds_per_clip"] is None for r in results["rows"][2:])
    assert all(np.isfinite(r["fvd_proxy"]) and np.isfinite(r["fvd_proxy_vs_recon_last_frame_left_out"]) for r in results["rows"])
    # The reconstructions are the second reference itself.
    assert next(r for r in results["rows"] if r["method"].startswith("real clips' latents + full"))["fvd_proxy_vs_recon"] == pytest.approx(0, abs=1e-4)
    assert all(np.isfinite(f["psnr_db_mean"]) and -1 <= f["ssim_mean"] <= 1 and f["motion_ratio"] > 0 for f in results["fidelity"])
    # The student also learnt from the toy SF-V's samples (generated.sfv_unet = the toy model).
    assert "generated_clips" in (tmp_path / "distil" / "loss.csv").read_text().splitlines()[0]
    assert (tmp_path / "table.md").is_file() and len(results["bars"]) == 3
    monkeypatch.setattr(sfv_core.assets, "TOY_TINY_DECODER", tmp_path / "assets" / "tiny.safetensors")
    assert tiny_decoder.load_tiny_decoder(ship(results)).config == tiny_decoder.FULL_CONFIG
    # --evaluate: the same scoring of an existing decoder, no data and no distillation.
    again = run(tmp_path / "again", ToyDecoderConfig(heldout_clips=3, threads=1), decoder=results["files"]["decoder"])
    assert again["fidelity"] == results["fidelity"] and (tmp_path / "again" / "samples.png").is_file()
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["results.json", "samples.png", "table.md"]


def test_tiny_decoder_miniature_refuses_a_bad_trainer_setting_before_any_work(tmp_path, capsys):
    from sfv_core.toy.decoder import main

    assert main(["--quick", "--out", str(tmp_path / "run"), "--set", "loss.temporal_weight=strong"]) == 2
    assert "loss.temporal_weight expects float" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--evaluate", "x.safetensors", "--steps", "5"])
    assert "which --evaluate skips" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "run"), "--evaluate", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    assert main(["--out", str(tmp_path / "run"), "--evaluate", str(tmp_path / "cut.safetensors")]) == 2
    assert "cut.safetensors" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_sweep_summary_and_bars():
    """Mean and min-max per row over seeds; the bars need the recipe rows apart from the control."""
    from sfv_core.toy.experiment import summarise, sweep_bars

    def rows(sfv, per_element, control, teacher, lora32=0.4):
        names = {"SF-V, 1 step": sfv, "SF-V (per-element reconstruction), 1 step": per_element,
                 "control: adversarial weight 0, 1 step": control, "teacher, 1 step, no CFG": teacher, "SF-V LoRA rank 32, 1 step": lora32}
        return [{"method": k, "unet_passes": 1, "fvd_proxy_vs_recon": v, "fvd_proxy": v + 5, "seconds_per_clip": 0.3, "unet_seconds_per_clip": 0.01} for k, v in names.items()]

    summary = summarise([rows(0.16, 0.5, 0.87, 0.86), rows(0.41, 0.8, 0.76, 0.86), rows(0.33, 0.6, 0.86, 0.86)])
    sfv = summary[0]["fvd_proxy_vs_recon"]
    assert sfv["mean"] == pytest.approx(0.3) and (sfv["min"], sfv["max"]) == (0.16, 0.41)
    bars = sweep_bars(summary)
    assert bars["SF-V, 1 step: mean below the control's, seed ranges apart"]
    assert not bars["SF-V (per-element reconstruction), 1 step: mean below the control's, seed ranges apart"]  # 0.8 > 0.76
    assert bars["SF-V, 1 step: mean <= 0.5 x the teacher's 1 step mean (the better of CFG / no CFG)"]  # 0.30 <= 0.43
    assert bars["SF-V LoRA rank 32, 1 step: mean <= 1.5 x the full fine-tune's (SF-V, 1 step)"]  # 0.40 <= 0.45
    assert not sweep_bars(summarise([rows(0.3, 0.5, 0.87, 0.86, lora32=0.5)] * 3))["SF-V LoRA rank 32, 1 step: mean <= 1.5 x the full fine-tune's (SF-V, 1 step)"]


def test_combine_groups_separate_runs_by_seed(tmp_path):
    """Runs made apart (a seed's LoRA rows later, with reuse_teacher) summarise as one sweep."""
    import json

    from sfv_core.toy.experiment import combine

    def write(folder, seed, rows, total):
        folder.mkdir()
        rows = [{"method": m, "unet_passes": 1, "fvd_proxy_vs_recon": v, "fvd_proxy": v + 5, "seconds_per_clip": 0.3, "unet_seconds_per_clip": 0.01} for m, v in rows.items()]
        (folder / "results.json").write_text(json.dumps({"config": {"seed": seed}, "rows": rows, "timings_s": {"total": total}}))

    for seed, sfv in ((0, 0.2), (1, 0.4)):
        write(tmp_path / f"main{seed}", seed, {"teacher, 1 step, no CFG": 0.9, "SF-V, 1 step": sfv, "control: adversarial weight 0, 1 step": 0.8}, 100.0)
        write(tmp_path / f"lora{seed}", seed, {"teacher, 1 step, no CFG": 0.95, "SF-V LoRA rank 32, 1 step": sfv + 0.1}, 50.0)
    results = combine(tmp_path / "out", [tmp_path / n for n in ("main0", "lora0", "main1", "lora1")])
    rows = {r["method"]: r["fvd_proxy_vs_recon"] for r in results["summary"]}
    assert rows["teacher, 1 step, no CFG"]["seeds"] == [0.9, 0.9]  # the first measurement of a repeated row
    assert rows["SF-V LoRA rank 32, 1 step"]["mean"] == pytest.approx(0.4)
    assert results["bars"]["SF-V LoRA rank 32, 1 step: mean <= 1.5 x the full fine-tune's (SF-V, 1 step)"]
    assert results["seconds_per_seed"] == {0: 150.0, 1: 150.0} and (tmp_path / "out" / "sweep.md").is_file()


def test_seed_sweep_shares_the_first_seeds_teacher_unless_told_otherwise(tmp_path, monkeypatch):
    """sweep_teacher 'first': later seeds start from a copy of the first seed's data, cache and
    teacher and rerun only the distillation; 'each': a whole run per seed."""
    from sfv_core.toy import experiment

    calls = []

    def fake_run(folder, cfg):
        calls.append((folder.name, cfg.seed, cfg.reuse_teacher, sorted(p.name for p in folder.iterdir()) if folder.exists() else []))
        for part in experiment.TEACHER_PARTS:  # what a whole run leaves behind
            (folder / part).mkdir(parents=True, exist_ok=True)
            (folder / part / "made_by").write_text(str(cfg.seed))
        row = {"method": "SF-V, 1 step", "unet_passes": 1, **{key: 0.1 * (cfg.seed + 1) for key in experiment.SWEEP_KEYS}}
        return {"rows": [row]}

    monkeypatch.setattr(experiment, "run", fake_run)
    results = experiment.sweep(tmp_path / "first", experiment.ToyConfig(), [0, 1, 2])
    assert [(name, seed, reuse) for name, seed, reuse, _ in calls] == [("seed-0", 0, False), ("seed-1", 1, True), ("seed-2", 2, True)]
    assert calls[1][3] == sorted(experiment.TEACHER_PARTS) and results["teacher"] == "the first seed's, shared"
    assert results["summary"][0]["fvd_proxy"]["seeds"] == pytest.approx([0.1, 0.2, 0.3])
    calls.clear()
    import dataclasses

    experiment.sweep(tmp_path / "each", dataclasses.replace(experiment.ToyConfig(), sweep_teacher="each"), [0, 1])
    assert [(seed, reuse, listing) for _, seed, reuse, listing in calls] == [(0, False, []), (1, False, [])]


@pytest.mark.parametrize("pair, message", [
    ("distill_step=500", "give FIELD=VALUE with a ToyConfig field"),
    ("distill_steps", "give FIELD=VALUE"),
    ("quick=1", "give FIELD=VALUE with a ToyConfig field"),  # a method, not a field
    ("distill_steps=many", "distill_steps takes a value of type int, like 1"),
    ("reuse_teacher=maybe", "reuse_teacher takes a value of type bool"),
    ("recipes=paper,best", "recipes: best unknown"),
    ("sweep_teacher=all", "sweep_teacher is 'first'"),
])
def test_experiment_refuses_a_bad_set_in_one_line(pair, message, capsys):
    from sfv_core.toy.experiment import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--out", "/nonexistent/never-written", "--set", pair])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
