"""Each setting is declared once: flags, help, TOML sections and checks come from the fields."""

from __future__ import annotations

import dataclasses

import pytest

from forwardgrad.cli import build_parser
from forwardgrad.config_fields import SECTIONS
from forwardgrad.guesses import GUESSES, GuessOptions
from forwardgrad.training.config import ConfigError, TrainConfig, config_fields, field_names
from forwardgrad.training.config_values import config_from_mapping, load_toml


def test_every_field_has_a_section_a_help_text_and_a_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for f in config_fields():
        assert f.metadata["section"] in SECTIONS and f.metadata["help"], f.name
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_guess_options_are_declared_once_and_read_by_name():
    guess_fields = {f.name for f in dataclasses.fields(GuessOptions)}
    assert guess_fields <= set(field_names())
    assert set(TrainConfig.GUESS_OPTION_KEYS) == guess_fields
    for name, cls in GUESSES.items():
        assert set(cls.option_names) <= guess_fields, name


def test_config_json_keys_come_in_section_order():
    order = list(SECTIONS)
    sections = [f.metadata["section"] for f in config_fields()]
    assert sections == sorted(sections, key=order.index)
    assert list(TrainConfig().to_dict()) == field_names()


def test_toml_keys_may_sit_in_their_sections_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'seed = 3\n[optimizer]\nlr = 0.001\n[schedule]\nepochs = 2\n[data]\ndataset = "digits"\n'
    )
    cfg = config_from_mapping(load_toml(path))
    assert (cfg.seed, cfg.lr, cfg.epochs, cfg.dataset) == (3, 0.001, 2, "digits")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[optimizer]\nepochs = 3\n", r"'epochs' belongs to \[schedule\], not \[optimizer\]"),
        ("[training]\nlr = 0.1\n", r"unknown table \[training\]; tables are the sections data"),
        ("lr = 0.1\n[optimizer]\nlr = 0.2\n", "sets 'lr' twice"),
        ("[optimizer]\nlrate = 0.2\n", "unknown config key 'lrate'"),
        ("[optimizer.inner]\nlr = 0.2\n", r"\[optimizer\] 'inner' is a table"),
    ],
)
def test_toml_section_errors_name_the_key_and_the_section(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_toml(path)


def test_a_guess_constraint_fails_when_the_config_loads():
    with pytest.raises(ConfigError, match="needs solver='svd'"):
        config_from_mapping({"guess": "wperp", "bottom": True})
    with pytest.raises(ConfigError, match="ns_refresh applies to wperp's newton-schulz solver"):
        config_from_mapping({"guess": "wperp", "ns_refresh": 5})
    assert config_from_mapping({"guess": "wperp", "solver": "newton-schulz", "ns_refresh": 5})
