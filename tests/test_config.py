"""Pipeline configs: good ones load, bad ones say what is wrong and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.config import ConfigError, load_config
from tests.pipelines.trace_stages import Trace, config_text

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_hello_example_loads():
    cfg = load_config(ROOT / "examples" / "hello.toml")
    assert [s.name for s in cfg.stages] == ["greet", "count"]
    assert cfg.stages[0].config.greeting == "hello"
    assert cfg.stages[1].wait.event == "detection.diasources_ready"
    assert cfg.stages[1].wait.policy == "fail"


def test_trace_config(tmp_path):
    text = config_text(
        [
            {"name": "a", "config": {"sleep": 0.5}},
            {"name": "b", "wait": {"event": "x.y", "timeout": 3, "policy": "continue"}},
        ],
        ordered=["a", "b"],
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.stages[0].cls is not None and cfg.stages[0].cls.__name__ == Trace.__name__
    assert cfg.stages[0].config.sleep == 0.5
    assert cfg.ordered_range == (0, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pipeline]\nstart='x'\n", "no [[stages]]"),
        ("[[stages]]\nname='a'\nclass='framework.stage:Stage'\n", "needs 'start'"),
        ("[pipeline]\nstart='x'\n[[stages]]\nname='a'\n", "missing 'class'"),
        (
            "[pipeline]\nstart='x'\n[[stages]]\nname='a'\nclass='nope.mod:X'\n",
            "cannot import nope.mod",
        ),
        (
            "[pipeline]\nstart='x'\n[[stages]]\nname='a'\nclass='framework.stage:Nope'\n",
            "has no 'Nope'",
        ),
        (
            "[pipeline]\nstart='x'\n[[stages]]\nname='a'\nclass='framework.stage:Stage'\nconfig={x=1}\n",
            "unknown key(s) ['x']",
        ),
        (
            "[pipeline]\nstart='x'\n[[stages]]\nname='a'\nclass='framework.stage:Stage'\nwait={event='e',timeout=1,policy='maybe'}\n",
            "policy",
        ),
        (
            "[pipeline]\nstart='x'\nbogus=1\n[[stages]]\nname='a'\nclass='framework.stage:Stage'\n",
            "unknown key(s) ['bogus']",
        ),
        (
            "[pipeline]\nstart='x'\n[runtime]\nwaiting='lazy'\n[[stages]]\nname='a'\nclass='framework.stage:Stage'\n",
            "waiting",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configs(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "p.toml" in str(err.value) or "config" in str(err.value)


def test_typed_stage_config(tmp_path):
    text = config_text([{"name": "a", "config": {"sleep": "slow"}}])
    with pytest.raises(ConfigError, match=r"stages\[0\].config.sleep: expected"):
        load_config(write(tmp_path, text))
