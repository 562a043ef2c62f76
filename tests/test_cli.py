"""The command line: listings, one clear error with exit code 2, prune/run/report output."""

import pytest

import prunekit
from prunekit.cli import main


def test_listings(capsys):
    for what, expected in [("methods", prunekit.list_methods()), ("models", ["lenet5", "resnet20", "vgg19_bn"]),
                           ("datasets", ["fashion-mnist", "cifar10-jpg", "image-folder"]), ("recipes", ["openlth-cifar"])]:
        assert main([what]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in expected)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "--methods", "snipp"], "unknown method 'snipp'"),
        (["prune", "--sparsity", "1.5"], "sparsity"),
        (["prune", "--opt", "num_step=3", "--methods", "force"], "num_step"),
        (["run", "--model", "lenet5", "--dataset", "fashion-mnist", "--method", "snip", "--opt", "num_batch=2"], "num_batch"),
        (["run", "--model", "lenet6", "--dataset", "fashion-mnist", "--method", "snip"], "unknown model"),
        (["sweep", "--models", "lenet5", "--dataset", "fashion-mnist", "--methods", "snip", "--sparsities", "0.9",
          "--train", "lrr=0.1"], "lrr"),
        (["report", "--out", "/nonexistent/prunekit"], "no results database"),
        # option text of the right type but out of range / not a choice: the real problem is named
        (["prune", "--methods", "force", "--opt", "num_steps=0"], "'num_steps' of method 'force' must be >= 1, got 0"),
        (["prune", "--methods", "force", "--opt", "schedule=cosine"], "must be one of exponential, linear; got 'cosine'"),
        (["prune", "--methods", "prospr", "--opt", "inner_momentum=1.5"], "must be <= 0.999, got 1.5"),
        (["prune", "--methods", "grasp", "--opt", "temperature=0"], "must be > 0.0, got 0.0"),
        # text of the wrong type
        (["prune", "--methods", "force", "--opt", "num_steps=ten"], "must be int, got 'ten'"),
        (["prune", "--methods", "snip", "--opt", "reinit=maybe"], "must be bool, got 'maybe'"),
        (["prune", "--methods", "force", "--opt", "count_rule=floor"], "must be one of exact, official; got 'floor'"),
    ],
)
def test_bad_input_is_one_error_and_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error:") and message in err and "Traceback" not in err


def test_sweep_config_typo_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text('models = ["lenet5"]\ndataset = "fashion-mnist"\nmethods = ["snip"]\nsparsities = [0.9]\nseedz = [0]\n')
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "'seedz'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # validated before anything was written


def test_methods_flag_narrows_a_config_and_drops_the_options_of_methods_left_out(tmp_path, capsys):
    from prunekit.cli import _sweep_spec, build_parser

    cfg = tmp_path / "s.toml"
    cfg.write_text('models = ["lenet5"]\ndataset = "fashion-mnist"\nmethods = ["force", "iter_snip"]\nsparsities = [0.99]\n'
                   '[options.force]\nnum_steps = 5\n[options.iter_snip]\nnum_steps = 7\n')
    parser = build_parser()
    spec = _sweep_spec(parser.parse_args(["sweep", "--config", str(cfg), "--methods", "iter_snip"]))
    assert spec.methods == ("iter_snip",) and dict(spec.method_options) == {"iter_snip": {"num_steps": 7}}
    assert [r.method_options for r in spec.requests() if r.method != "dense"] == [{"num_steps": 7}]
    # options typed on the command line for a method that is not swept stay an error
    assert main(["sweep", "--config", str(cfg), "--methods", "iter_snip", "--opt", "force.num_steps=3",
                 "--out", str(tmp_path / "o")]) == 2
    assert "force" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_prune_run_and_report(tmp_path, tiny_mnist, capsys):
    common = ["--dataset", "mnist", "--data-dir", str(tiny_mnist)]
    assert main(["prune", "--model", "lenet_300_100", *common, "--methods", "snip,magnitude", "--sparsity", "0.9",
                 "--train", "val_size=40", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| layer (size)" in out and "snip" in out and "total density" in out and "10.00%" in out
    assert main(["run", "--model", "lenet_300_100", *common, "--method", "snip", "--sparsity", "0.9", "--epochs", "1",
                 "--train", "val_size=40", "--train", "batch_size=50", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "snip @ 0.9 seed 0: done" in out and "run folder:" in out
    assert main(["report", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| snip |" in out and "90 %" in out
    assert (tmp_path / "o" / "report" / "results.csv").is_file()


def test_sweep_checks_dataset_and_metric_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["sweep", "--models", "lenet5", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--methods", "snip",
            "--sparsities", "0.9", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    assert "mnist" in capsys.readouterr().err
    assert not out.exists()  # no database, no failed rows
    argv[argv.index("--data-dir") + 1] = str(tmp_path)
    assert main([*argv, "--report", "--metric", "median"]) == 2
    assert "unknown metric 'median'" in capsys.readouterr().err and not out.exists()


def test_the_main_job_shows_every_method_at_three_sparsities_against_dense():
    from prunekit.cli import DEMO_CONFIG
    from prunekit.experiments import load_sweep_file

    spec = load_sweep_file(DEMO_CONFIG)
    runs = spec.resolved()
    assert {r.method for r in runs} == {"dense", *[m for m in prunekit.list_methods() if m != "grasp_abs"]}
    assert sorted({r.sparsity for r in runs if r.method != "dense"}) == [0.9, 0.98, 0.995]
    assert len(runs) == 34


def test_autosparse_teach_from_a_config_trains_the_irp_run_once_then_teaches(tmp_path, tiny_mnist, capsys, monkeypatch):
    import prunekit.autosparse as autosparse
    from prunekit.autosparse import Scorer

    irp = tmp_path / "irp.toml"
    irp.write_text('models = ["lenet_300_100"]\ndataset = "mnist"\nmethods = ["imp"]\nsparsities = [0.9]\nseeds = [0]\n'
                   'recipe = "lenet-fmnist"\nepochs = 1\ndense = false\n[train]\nval_size = 40.0\nbatch_size = 50\n'
                   '[options.imp]\nschedule = "num"\nrounds = 2\nprune_first = true\n')
    taught = []
    real_teach = autosparse.teach

    def small_teach(features, targets, **kwargs):  # the real teacher on a slice: the wiring is under test here
        taught.append((features.shape, float(targets.min()), float(targets.max())))
        return real_teach(features[:2000], targets[:2000], **{**kwargs, "epochs": 1})

    monkeypatch.setattr(autosparse, "teach", small_teach)
    argv = ["autosparse", "teach", "--config", str(irp), "--out", str(tmp_path / "o"), "--data-dir", str(tiny_mnist),
            "--save", str(tmp_path / "s.pt"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert taught == [((266_200, 2), 0.0, 1.0)]
    meta = Scorer.load(tmp_path / "s.pt").meta
    assert meta["taught_on"]["model"] == "lenet_300_100" and meta["taught_on"]["rounds"] == 2
    assert {k: meta["taught_on"]["irp"][k] for k in ("schedule", "rounds", "prune_first")} == {"schedule": "num", "rounds": 2, "prune_first": True}
    assert "held-out Spearman" in capsys.readouterr().out
    # again: the IRP run is read from the database, not trained again
    assert main(argv) == 0
    assert "1 skipped" in capsys.readouterr().err and len(taught) == 2
    # a file with more than one run, or no IMP run, is refused before anything is written
    irp.write_text(irp.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["autosparse", "teach", "--config", str(irp), "--out", str(tmp_path / "p"), "--data-dir", str(tiny_mnist),
                 "--save", str(tmp_path / "t.pt"), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "exactly one IMP/IRP run" in err and "2 run(s)" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "t.pt").exists()
    assert main([*argv[:argv.index("--save") + 1], str(tmp_path), "--no-progress"]) == 2
    assert "is a directory" in capsys.readouterr().err
