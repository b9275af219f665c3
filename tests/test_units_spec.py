import math

import pytest

from memgauge.spec import SpecError, format_spec, parse_spec
from memgauge.units import GiB, MiB, fmt_bytes, parse_bytes


def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * GiB
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512 MiB") == 512 * MiB
    assert parse_bytes("h100") == 80 * GiB
    for bad in ("lots", "-1GiB", "1XB", float("nan")):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_fmt_bytes_is_1024_based_and_labelled():
    assert fmt_bytes(1536 * MiB) == "1.50 GiB"
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(None) == "—" and fmt_bytes(math.nan) == "—"


def test_spec_round_trip():
    name, opts = parse_spec("lora:r=8,targets=q_proj+v_proj")
    assert name == "lora" and opts == {"r": "8", "targets": "q_proj+v_proj"}
    assert (
        format_spec("lora", {"targets": ("q_proj", "v_proj"), "r": 8})
        == "lora:r=8,targets=q_proj+v_proj"
    )
    for bad in ("", "lora:r", "lora:r=1,r=2", "a b"):
        with pytest.raises(SpecError):
            parse_spec(bad)


def test_technique_specs_are_canonical():
    from memgauge.techniques import canonical

    assert canonical(["lora:alpha=16,r=8"]) == ["lora"]  # defaults omitted
    assert canonical(["lora:r=4", "checkpoint"]) == ["checkpoint", "lora:r=4"]
