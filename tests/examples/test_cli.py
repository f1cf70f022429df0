"""The command line refuses bad runs: one-line errors, a non-zero exit, and nothing trained."""

import os

import pytest
from benchmark_folders import write_cub
from pml_hyperbolic_examples import build, config, models, presets
from pml_hyperbolic_examples.config import build_parser, parse_args
from pml_hyperbolic_examples.train import main

FAST_DIGITS = ["--samples-per-epoch", "100"]


def refused(argv, capsys, one_line=True):
    """Run ``main(argv)``, expecting exit status 2 and a message without a traceback (on one line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1 or not one_line, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["--epochs", "-3"], "argument --epochs: expected a positive integer, got '-3'"),
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer"),
        (["--batch-size", "-10"], "argument --batch-size: expected a positive integer"),
        (["--batch-size", "-5"], "argument --batch-size: expected a positive integer"),
        (["--seeds", "a"], "argument --seeds: expected comma-separated integers, got 'a'"),
        (["--curvature", "-1"], "argument --curvature: expected a positive number, got '-1'"),
        (["--curvature", "nan"], "argument --curvature: expected a positive number"),
        (["--lr", "0"], "argument --lr: expected a positive number"),
        (["--device", "gpu"], "argument --device: expected auto, cpu, cuda or cuda:N"),
        (["--crop-min-scale", "0"], "argument --crop-min-scale: expected a number in (0, 1]"),
        (["--val-fraction", "1"], "argument --val-fraction: expected a number in [0, 1)"),
        (["--samples-per-epoch", "all"], "argument --samples-per-epoch: expected a positive integer or 'classes'"),
        (["--dataset", "cub"], "--loss (or --preset) is required"),
        (["--loss", "nope"], "unknown loss nope"),
        (["--batch-size", "50", "--m-per-class", "3"], "must be a multiple of --m-per-class"),
        (["--patience", "3"], "--patience needs a validation split"),
        (["--primary-metric", "recall_at_3"], "--primary-metric for digits must be one of recall_at_1"),
        (["--lr-schedule", "step"], "--lr-schedule step needs --lr-step-epochs"),
        (["--amp-dtype", "float16"], "--amp-dtype needs --amp"),
        (["--grad-clip-norm", "1", "--grad-clip-value", "1"], "choose one of --grad-clip-norm and --grad-clip-value"),
        (["--backbone", "resnet_does_not_exist"], "unknown --backbone 'resnet_does_not_exist'"),
        (["--chest-regularizer", "hyp"], "argument --chest-regularizer: invalid choice: 'hyp'"),
        (["--chest-regularizer-weight", "-1"], "argument --chest-regularizer-weight: expected a number >= 0"),
        (["--loss", "softtriple", "--chest-regularizer", "hier"], "--chest-regularizer applies to the chest loss only"),
        (
            ["--loss", "softtriple", "--chest-regularizer-weight", "2"],
            "--chest-regularizer-weight applies to the chest loss only",
        ),
        (
            ["--loss", "chest", "--chest-regularizer", "none", "--chest-regularizer-weight", "1"],
            "--chest-regularizer none has no weight",
        ),
        (
            ["--pretrained-path", "missing.pth", "--backbone", "test_vit"],
            "--pretrained-path 'missing.pth' is not a file",
        ),
    ],
)
def test_bad_options_get_one_line_and_exit_status_2(argv, message, capsys):
    err = refused(argv, capsys)
    assert message in err and err.rstrip().endswith("(see --help)")


def test_a_missing_dataset_is_reported_before_any_weights_are_looked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(build, "build_trunk", lambda *a, **k: pytest.fail("the backbone was built"))
    argv = ["--dataset", "cub", "--data-root", str(tmp_path), "--loss", "chest", "--output", str(tmp_path / "o")]
    err = refused(argv, capsys, one_line=False)  # with the expected folder layout
    assert "CUB: no dataset found" in err and "never downloads" in err
    assert not os.path.exists(tmp_path / "o")


def test_missing_weights_offline_fail_at_once_and_name_the_ways_out(tmp_path, capsys, monkeypatch):
    folder, _ = write_cub(str(tmp_path / "data"))
    monkeypatch.setattr(models, "cached_weights", lambda cfg: None)
    monkeypatch.setattr(models, "host_reachable", lambda host: False)
    create_model = models.timm.create_model

    def no_download(name, pretrained=False, **kwargs):
        assert not pretrained, "tried to download"
        return create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(models.timm, "create_model", no_download)
    argv = ["--dataset", "cub", "--data-root", folder, "--loss", "chest", "--backbone", "test_vit"]
    err = refused(argv + ["--output", str(tmp_path / "o")], capsys)
    assert "cannot be reached" in err and "--pretrained-path FILE" in err and "--no-pretrained" in err


def test_resume_with_nothing_to_resume_stops(tmp_path, capsys):
    out = tmp_path / "x"
    err = refused(["--loss", "contrastive", "--output", str(out), "--resume", *FAST_DIGITS], capsys)
    assert f"Nothing to resume in {out}" in err
    assert not os.path.exists(out / "results.json")


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    args = ["--loss", "contrastive", "--epochs", "1", "--output", str(tmp_path), *FAST_DIGITS]
    main(args)
    capsys.readouterr()
    assert "already holds a run: pass --resume" in refused(args, capsys)


def test_the_last_line_names_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["--loss", "contrastive", "--epochs", "1", *FAST_DIGITS])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "Reported: epoch 1 (last epoch)."
    assert lines[-1] == f"Results, plots, logs and checkpoints: {os.path.join('runs', 'digits_contrastive_mlp')}"
    assert os.path.isfile(tmp_path / "runs" / "digits_contrastive_mlp" / "results.json")


def test_presets_set_only_existing_options(monkeypatch):
    config.check_presets(build_parser())
    monkeypatch.setitem(presets.PRESETS, "hier_resnet50_cub", {**presets.PRESETS["hier_resnet50_cub"], "lr_rate": 1})
    with pytest.raises(ValueError, match="unknown options \\['lr_rate'\\]"):
        parse_args([])


def test_every_option_is_explained_once():
    parser = build_parser()
    assert "default: None" not in parser.format_help()
    formatter = config.HelpFormatter("train.py")
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            text = formatter._get_help_string(action)
            assert text.count("(default:") + text.count("by default") <= 1, action.dest


def test_presets_and_dataset_defaults():
    cfg = parse_args(["--preset", "hier_resnet50_cub"])
    assert (cfg.dataset, cfg.loss, cfg.backbone, cfg.embedding_size, cfg.lr) == (
        "cub",
        "proxy_anchor+hier",
        "resnet50",
        512,
        1e-4,
    )
    assert (cfg.batch_size, cfg.m_per_class, cfg.proxy_lr_scale, cfg.hier_lr_scale, cfg.warmup_epochs) == (
        180,
        2,
        1e4,
        50,
        1,
    )
    assert (cfg.lr_schedule, cfg.lr_step_epochs, cfg.lr_gamma, cfg.amp, cfg.freeze_bn) == ("step", 5, 0.5, True, True)
    cfg = parse_args(["--preset", "hier_dino_sop", "--lr", "1e-3"])
    assert (cfg.backbone, cfg.lr, cfg.head_lr_scale, cfg.epochs) == ("vit_small_patch16_224.dino", 1e-3, 100, 150)
    cfg = parse_args(["--preset", "hyp_vit_cub"])
    assert (cfg.loss, cfg.temperature, cfg.batch_size, cfg.m_per_class, cfg.samples_per_epoch) == (
        "hyperbolic_contrastive",
        0.2,
        900,
        9,
        "classes",
    )
    cfg = parse_args([])
    assert cfg.dataset == "digits" and cfg.losses == list(config.LOSSES) and cfg.seeds == [0]
    assert parse_args(["--seeds", "3,1"]).seeds == [3, 1]
    cfg = parse_args(["--dataset", "fashion-mnist"])
    assert (cfg.backbone, cfg.batch_size, cfg.m_per_class) == ("cnn", 50, 10)


def test_loss_registry_adds_a_builder_and_refuses_bad_entries(monkeypatch, capsys):
    """``@register_loss`` adds a builder to the registry ``--loss`` reads; duplicates, unparsable names and
    undocumented builders are refused when the module is imported, not when a run starts."""
    from pml_hyperbolic_examples import losses

    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))

    @losses.register_loss("my_softtriple")
    def my_softtriple(cfg, num_classes):
        """pml SoftTriple under another name."""
        return losses.softtriple(cfg, num_classes)

    assert losses.LOSSES["my_softtriple"] is my_softtriple
    with pytest.raises(ValueError, match="already taken"):
        losses.register_loss("chest")
    with pytest.raises(ValueError, match="already taken"):
        losses.register_loss("all")
    with pytest.raises(ValueError, match="splits on commas"):
        losses.register_loss("a,b")
    with pytest.raises(ValueError, match="docstring"):
        losses.register_loss("undocumented")(lambda cfg, num_classes: None)
    assert "undocumented" not in losses.LOSSES
