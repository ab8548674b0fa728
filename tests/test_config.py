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


@pytest.mark.parametrize("env,param", [({"REVERB_UBATCH": "32"}, "ubatch"), ({"REVERB_PREFILL_CHUNK": "48"},
                                                                          "prefill_chunk"),
                                       ({"REVERB_BATCH": "64", "REVERB_PARALLEL": "4"}, "batch")])
def test_deterministic_mode_needs_room_for_whole_prompt_passes(env, param):
    assert Settings.build(env).deterministic is False          # fine in the default mode
    with pytest.raises(ConfigError) as e:
        Settings.build({**env, "REVERB_DETERMINISTIC": "1"})
    assert e.value.param == param and "deterministic" in e.value.message


def test_prompt_cache_settings():
    s = Settings.build({"REVERB_PROMPT_CACHE_MB": "0", "REVERB_SHARE_PROMPT_CACHE": "yes"})
    assert s.prompt_cache_mb == 0 and s.share_prompt_cache is True
    assert Settings.build({}).share_prompt_cache is False and Settings.build({}).prompt_cache_mb > 0
    with pytest.raises(ConfigError):
        Settings.build({"REVERB_PROMPT_CACHE_MB": "-1"})
