from pathlib import Path

import pytest

from evosparse.engine.config import build_config, config_difference
from evosparse.errors import UsageError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_cli_values_override_toml_which_overrides_defaults(tmp_path):
    toml = write(tmp_path, 'method = "static"\nepochs = 7\nlr = 0.2\nhidden = [40, 20]\n[params]\n')
    config = build_config(toml, {"lr": 0.01, "epochs": None}, [])
    assert (config.method, config.epochs, config.lr, config.hidden) == ("static", 7, 0.01, [40, 20])


def test_param_pairs_are_typed_by_the_method_and_override_toml(tmp_path):
    toml = write(tmp_path, '[params]\nzeta = 0.1\ngrow_init = "zero"\n')
    config = build_config(toml, {}, ["zeta=0.25", "update_unit=step"])
    assert config.params["zeta"] == 0.25 and config.params["grow_init"] == "zero"
    assert config.params["update_unit"] == "step" and config.params["update_interval"] == 1


@pytest.mark.parametrize(
    "overrides, pairs, message",
    [
        ({"density": 0.0}, [], "density must be in"),
        ({"density": 1.01}, [], "density must be in"),
        ({"density": -0.5}, [], "density must be in"),
        ({"density": 0.1, "epsilon": 2.0}, [], "not both"),
        ({"epsilon": -1.0}, [], "epsilon must be positive"),
        ({"method": "magic"}, [], "unknown method"),
        ({"model": "transformer"}, [], "unknown model"),
        ({"epochs": -3}, [], "epochs must be at least 1"),
        ({"epochs": 0}, [], "epochs must be at least 1"),
        ({"batch_size": 0}, [], "batch size"),
        ({"lr": 0.0}, [], "lr must be positive"),
        ({"lr": float("nan")}, [], "lr must be"),
        ({"optimizer": "lbfgs"}, [], "unknown optimizer"),
        ({"distribution": "powerlaw"}, [], "unknown distribution"),
        ({"device": "tpu"}, [], "unknown device"),
        ({"hidden": "300,abc"}, [], "hidden sizes must be integers"),
        ({"hidden": "300,0"}, [], "positive"),
        ({}, ["zeta=abc"], "zeta expects float"),
        ({}, ["zeta"], "KEY=VALUE"),
        ({}, ["unknown=1"], "has no parameter 'unknown'"),
        ({"method": "static"}, ["zeta=0.3"], "has no parameter 'zeta'"),
        ({"method": "set"}, ["set.zeta=0.3"], r"'set.zeta' \(parameters: .*defaults\); METHOD.KEY names one method in"),
        ({"method": "set"}, ["defaults=ours"], "defaults must be one of evosparse, paper"),
        ({"backend": "csr", "method": "gmp"}, [], "gmp starts dense; --backend csr holds sparse layers only"),
        ({"nesterov": True, "optimizer": "adam"}, [], "nesterov needs"),
        ({"backend": "csr", "method": "switcher"}, [], "method switcher has no csr implementation"),
        ({"backend": "csr", "method": "dense"}, [], "needs a sparse method"),
        ({"backend": "sparse"}, [], "unknown backend"),
    ],
)
def test_every_bad_value_fails_with_one_line(overrides, pairs, message):
    with pytest.raises(UsageError, match=message) as info:
        build_config(None, overrides, pairs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs = [", "not valid TOML"),
        ("epochs = 2.5", "epochs has the wrong type"),
        ("colour = 'blue'", "unknown configuration key 'colour'"),
        ("params = 3", "params must be a table"),
        ("density = 'high'", "density has the wrong type"),
    ],
)
def test_malformed_config_files_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(UsageError, match=message) as info:
        build_config(write(tmp_path, text), {}, [])
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_config_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_config(tmp_path / "absent.toml", {}, [])
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="config file"):
        build_config(binary, {}, [])


def test_a_saved_run_without_a_later_added_method_parameter_counts_as_its_default():
    config = build_config(None, {"method": "rigl"}, [])
    saved = config.to_dict()
    newest = next(iter(saved["params"]))
    saved["params"] = {key: value for key, value in saved["params"].items() if key != newest}
    assert config_difference(saved, config) is None
    changed = build_config(None, {"method": "rigl"}, [f"alpha={config.params['alpha'] / 2}"])
    assert config_difference(saved, changed)[0] == "params"
    assert config_difference({**saved, "method": "set"}, config)[0] == "method"


def test_a_run_saved_before_rigls_swap_rule_existed_reads_as_the_former_rule():
    saved = build_config(None, {"method": "rigl"}).to_dict()
    del saved["params"]["swap_rule"]  # a checkpoint made before the parameter existed
    now = build_config(None, {"method": "rigl"})
    assert now.params["swap_rule"] == "reference"
    assert config_difference(saved, now) == ("params", {**now.params, "swap_rule": "disjoint"}, now.params)
    assert config_difference(saved, build_config(None, {"method": "rigl"}, ["swap_rule=disjoint"])) is None
