"""Property: every TOML config and every flag value gives a valid config or a ConfigError, never
another exception (a traceback on the command line)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardgrad.cli import build_parser
from forwardgrad.cli.flags import config_from_args
from forwardgrad.training.config import ConfigError, TrainConfig, field_names
from forwardgrad.training.config_values import config_from_mapping, load_toml

KEYS = field_names()
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples every run
    suppress_health_check=[HealthCheck.too_slow],
)

# Values a user might type: near the valid ones, and far from them.
FLAG_TEXT = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "3",
            "1e-3",
            "1e400",
            "-0.0",
            "inf",
            "-inf",
            "nan",
            "full",
            "none",
            "true",
            "false",
            "yes",
            "2.5",
            " 7 ",
            "",
            "wt",
            "wperp",
            "cpu",
            "cuda",
            "cuda:7",
            "mps",
            "normal",
            "angle",
            "svd",
            "projection",
            "digits",
            "adamw",
            "9" * 40,
        ]
    ),  # fmt: skip
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
TOML_SCALAR = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    _SAFE_TEXT,
    st.sampled_from(["wt", "activation", "svd", "full", "none", "cpu", "angle", "digits"]),
)
TOML_VALUE = st.one_of(TOML_SCALAR, st.lists(TOML_SCALAR, max_size=3))
TOML_KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(["epoch", "batch-size", "Width"]))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string


def _valid_or_config_error(make) -> None:
    try:
        cfg = make()
    except ConfigError:
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.validate() is cfg
    assert config_from_mapping(cfg.to_dict()) == cfg  # what it writes, it reads back


@SETTINGS
@given(st.dictionaries(TOML_KEY, TOML_VALUE, max_size=6), st.booleans())
def test_any_toml_config_gives_a_config_or_a_clear_error(values, with_table):
    text = "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
    if with_table:
        text += "[extra]\nkey = 1\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.toml"
        path.write_text(text, encoding="utf-8")
        _valid_or_config_error(lambda: config_from_mapping(load_toml(path)))


@SETTINGS
@given(st.binary(max_size=64))
def test_any_bytes_as_a_toml_file_give_a_config_or_a_clear_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.toml"
        path.write_bytes(data)
        _valid_or_config_error(lambda: config_from_mapping(load_toml(path)))


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), FLAG_TEXT, min_size=1, max_size=4))
def test_any_flag_values_give_a_config_or_a_clear_error(flags):
    argv = ["train"] + [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    args = build_parser().parse_args(argv)
    _valid_or_config_error(lambda: config_from_args(args))
