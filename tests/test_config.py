"""Settings: built once from defaults, REVERB_* variables and flags, validated."""

from __future__ import annotations


import pytest

from reverb.settings import Settings
from reverb.errors import ConfigError


def test_env_then_flags():
    env = {"REVERB_PARALLEL": "3", "REVERB_API_KEY": "a,b", "REVERB_FLASH_ATTN": "off", "REVERB_DB": "/x/l.db",
           "REVERB_QUEUE_TIMEOUT": "2.5", "REVERB_ALLOWED_HOSTS": "box.local,10.0.0.2"}
    s = Settings.build(env, parallel=5)
    assert s.parallel == 5 and s.api_keys == ("a", "b") and s.flash_attn is False and s.db_target == "/x/l.db"
    assert s.queue_timeout == 2.5 and s.allowed_hosts == ("box.local", "10.0.0.2")


def test_default_ledger_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Settings.build({}).db_target == str(tmp_path / "reverb" / "ledger.sqlite3")


def test_a_postgres_url_survives_as_given():
    url = "postgresql://reverb@db.internal:5432/reverb"
    assert Settings.build({"REVERB_DB": url}).db_target == url     # a Path would fold '//' into '/'
    assert Settings.build({}, db=url).db_target == url


@pytest.mark.parametrize("env", [{"REVERB_PARALLEL": "many"}, {"REVERB_PARALLEL": "0"}, {"REVERB_PORT": "70000"},
                                 {"REVERB_FLASH_ATTN": "maybe"}, {"REVERB_LOG_FORMAT": "xml"}])
def test_bad_values_name_the_setting(env):
    with pytest.raises(ConfigError) as e:
        Settings.build(env)
    name = next(iter(env))[len("REVERB_"):].lower()
    assert name in e.value.message or e.value.param == name
