import pytest

from jtransfer.config_args import parse

DEFAULTS = {"model": "efficientnet_lite0", "res": 96, "freeze": "full", "data": "digits"}


def test_parse_values_and_lists():
    out = parse("res=160, freeze=[1, 2],data=/tmp/a", DEFAULTS)
    assert out["res"] == 160 and out["freeze"] == [1, 2] and out["data"] == "/tmp/a"


def test_empty_arg_keeps_defaults():
    assert parse(None, DEFAULTS) == DEFAULTS


def test_unknown_key_names_close_match():
    with pytest.raises(ValueError, match="'rez'.*did you mean 'res'"):
        parse("rez=3", DEFAULTS)


def test_not_key_value():
    with pytest.raises(ValueError, match="not key=value"):
        parse("res", DEFAULTS)
