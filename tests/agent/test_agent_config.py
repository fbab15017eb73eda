"""The device agent's TOML config: a full file loads; every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from ftedge.device_agent.config import AgentConfig, load_config, topic_root

from ftedge.errors import AgentError, FtedgeError

PASSWORD = "s3cret-p@ss"

FULL = """\
device_id = "dev-001"
fleet = "demo"
state_dir = "state"
log_level = "debug"

[mqtt]
url = "mqtts://broker.example:8884"
username = "dev-001"
password_file = "mqtt.pass"
ca_file = "tls/ca.pem"
cert_file = "tls/dev.pem"
key_file = "tls/dev.key"
keepalive = 15
session_expiry = 3600
will_delay = 5

[paths]
data_root = "/data"
bundle_root = "bundles"

[deploy]
trusted_keys = ["keys/fleet.pub"]

[outbox]
max_bytes = 1048576
max_age_s = 3600
"""

MINIMAL = """\
device_id = "dev-001"
fleet = "demo"
state_dir = "/var/lib/ftedge"
[mqtt]
url = "mqtt://127.0.0.1"
[paths]
data_root = "/data"
bundle_root = "/var/lib/ftedge/bundles"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tls").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(exist_ok=True)
    for name in ("tls/ca.pem", "tls/dev.pem", "tls/dev.key", "keys/fleet.pub"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "mqtt.pass").write_text(PASSWORD + "\n")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(AgentError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_full_config_loads_with_paths_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    base = tmp_path.resolve()
    assert isinstance(cfg, AgentConfig)
    assert (cfg.device_id, cfg.fleet, cfg.log_level) == ("dev-001", "demo", "debug")
    assert cfg.state_dir == base / "state"
    assert cfg.paths.data_root == Path("/data").resolve()
    assert cfg.paths.bundle_root == base / "bundles"
    m = cfg.mqtt
    assert (m.host, m.port, m.tls, m.username) == ("broker.example", 8884, True, "dev-001")
    assert m.password == PASSWORD  # trailing newline stripped
    assert (m.ca_file, m.cert_file, m.key_file) == (base / "tls/ca.pem", base / "tls/dev.pem", base / "tls/dev.key")
    assert (m.keepalive, m.session_expiry, m.will_delay) == (15, 3600, 5)
    assert cfg.deploy.trusted_keys == (base / "keys/fleet.pub",)
    assert (cfg.outbox.max_bytes, cfg.outbox.max_age_s) == (1048576, 3600)
    assert cfg.source == (tmp_path / "agent.toml").absolute()
    assert topic_root(cfg) == "ftedge/v1/demo/dev-001/"


def test_password_is_never_shown(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    for text in (repr(cfg), str(cfg), repr(cfg.mqtt), str(cfg.mqtt), str(cfg.to_public_dict())):
        assert PASSWORD not in text
        assert "***" in text
    assert cfg.mqtt.to_public_dict()["password"] == "***"
    assert cfg.to_public_dict()["mqtt"]["password"] == "***"
    assert cfg.to_public_dict()["state_dir"] == str(tmp_path.resolve() / "state")


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    m = cfg.mqtt
    assert (m.host, m.port, m.tls) == ("127.0.0.1", 1883, False)
    assert m.username is m.password is m.ca_file is m.cert_file is m.key_file is None
    assert (m.keepalive, m.session_expiry, m.will_delay) == (30, 86400, 10)
    assert cfg.log_level == "info"
    assert cfg.deploy.trusted_keys == ()
    assert (cfg.outbox.max_bytes, cfg.outbox.max_age_s) == (64 * 1024 * 1024, 7 * 24 * 3600)
    assert "password=None" in repr(m)


def test_tls_default_port_and_ipv6(tmp_path):
    assert load_config(write(tmp_path, edit(MINIMAL, "mqtt://127.0.0.1", "mqtts://broker"))).mqtt.port == 8883
    m = load_config(write(tmp_path, edit(MINIMAL, "mqtt://127.0.0.1", "mqtt://[::1]:1884"))).mqtt
    assert (m.host, m.port, m.tls) == ("::1", 1884, False)


def test_log_level_case_insensitive(tmp_path):
    text = 'log_level = "WARNING"\n' + MINIMAL
    assert load_config(write(tmp_path, text)).log_level == "warning"


@pytest.mark.parametrize("old,new,key,words", [
    ('url = "mqtts://broker.example:8884"', 'url = "http://broker:1883"', "mqtt.url",
     "scheme 'http' is not mqtt:// or mqtts://"),
    ('url = "mqtts://broker.example:8884"', 'url = "broker:1883"', "mqtt.url", "mqtt://"),
    ('url = "mqtts://broker.example:8884"', 'url = "mqtts://:8883"', "mqtt.url", "no host"),
    ('url = "mqtts://broker.example:8884"', 'url = "mqtts://broker:99999"', "mqtt.url", "port"),
    ('url = "mqtts://broker.example:8884"', 'url = "mqtts://u:p@broker"', "mqtt.url", "password_file"),
    ('url = "mqtts://broker.example:8884"', 'url = 1883', "mqtt.url", "must be a string"),
    ('device_id = "dev-001"', 'device_id = "dev/001"', "device_id", "topic level"),
    ('device_id = "dev-001"', 'device_id = "dev+"', "device_id", "topic level"),
    ('fleet = "demo"', 'fleet = "de#mo"', "fleet", "topic level"),
    ('fleet = "demo"', 'fleet = "' + "x" * 65 + '"', "fleet", "1-64"),
    ('device_id = "dev-001"', 'device_id = ""', "device_id", "must not be empty"),
    ('device_id = "dev-001"', "device_id = 7", "device_id", "must be a string, got integer"),
    ('key_file = "tls/dev.key"\n', "", "mqtt.cert_file", "key_file"),
    ('password_file = "mqtt.pass"', 'password_file = "missing.pass"', "mqtt.password_file", "cannot read"),
    ('ca_file = "tls/ca.pem"', 'ca_file = "tls/nope.pem"', "mqtt.ca_file", "cannot read"),
    ('trusted_keys = ["keys/fleet.pub"]', 'trusted_keys = ["keys/none.pub"]', "deploy.trusted_keys[0]",
     "cannot read"),
    ('trusted_keys = ["keys/fleet.pub"]', 'trusted_keys = "keys/fleet.pub"', "deploy.trusted_keys",
     "must be an array"),
    ("keepalive = 15", "keepalive = -1", "mqtt.keepalive", "negative"),
    ("keepalive = 15", "keepalive = 70000", "mqtt.keepalive", "at most 65535"),
    ("keepalive = 15", 'keepalive = "15"', "mqtt.keepalive", "must be an integer"),
    ("keepalive = 15", "keepalive = true", "mqtt.keepalive", "must be an integer"),
    ("keepalive = 15", "keepalive = 1.5", "mqtt.keepalive", "must be an integer"),
    ("session_expiry = 3600", "session_expiry = -5", "mqtt.session_expiry", "negative"),
    ("will_delay = 5", "will_delay = -5", "mqtt.will_delay", "negative"),
    ("max_bytes = 1048576", "max_bytes = -1", "outbox.max_bytes", "negative"),
    ("max_age_s = 3600", "max_age_s = 0", "outbox.max_age_s", "at least 1"),
    ('log_level = "debug"', 'log_level = "verbose"', "log_level", "debug, info, warning, error"),
    ('state_dir = "state"', 'state_dir = ""', "state_dir", "empty"),
    ('state_dir = "state"\n', "", "state_dir", "required key is missing"),
    ('device_id = "dev-001"\n', "", "device_id", "required key is missing"),
    ('fleet = "demo"\n', "", "fleet", "required key is missing"),
    ('url = "mqtts://broker.example:8884"\n', "", "mqtt.url", "required key is missing"),
    ('data_root = "/data"\n', "", "paths.data_root", "required key is missing"),
    ('bundle_root = "bundles"\n', "", "paths.bundle_root", "required key is missing"),
])
def test_invalid_values_name_the_key(tmp_path, old, new, key, words):
    msg = error(tmp_path, edit(FULL, old, new))
    assert f"{key}: " in msg and words in msg, msg
    assert str(tmp_path / "agent.toml") in msg


def test_table_of_wrong_type(tmp_path):
    msg = error(tmp_path, "outbox = 5\n" + MINIMAL)
    assert "outbox: must be a table ([outbox]), got integer" in msg


def test_password_file_is_never_echoed_in_errors(tmp_path):
    msg = error(tmp_path, edit(FULL, "keepalive = 15", "keepalive = -1"))
    assert PASSWORD not in msg


def test_tls_files_without_tls_are_refused(tmp_path):
    msg = error(tmp_path, edit(FULL, "mqtts://broker.example:8884", "mqtt://broker.example"))
    assert "mqtt.ca_file: " in msg and "mqtts://" in msg


def test_empty_password_file(tmp_path):
    path = write(tmp_path, FULL)
    (tmp_path / "mqtt.pass").write_text("\n")
    with pytest.raises(AgentError, match=r"mqtt\.password_file: .* is empty"):
        load_config(path)


def test_password_keeps_inner_whitespace(tmp_path):
    path = write(tmp_path, FULL)
    (tmp_path / "mqtt.pass").write_text(" a b \r\n")
    assert load_config(path).mqtt.password == " a b "


def test_missing_tables(tmp_path):
    msg = error(tmp_path, MINIMAL.split("[mqtt]")[0])
    assert "mqtt: required table is missing" in msg and "paths: required table is missing" in msg
    assert "mqtt.url" not in msg  # the table is reported once, not each of its keys


@pytest.mark.parametrize("old,new,key,suggestion", [
    ('device_id = "dev-001"', 'device_id = "dev-001"\ndevce_id = "x"', "devce_id", "'device_id'"),
    ('password_file = "mqtt.pass"', 'pasword_file = "mqtt.pass"', "mqtt.pasword_file", "'password_file'"),
    ("keepalive = 15", "keep_alive = 15", "mqtt.keep_alive", "'keepalive'"),
    ("[mqtt]", "[mqqt]\nurl = 'mqtt://x'\n[mqtt]", "mqqt", "'mqtt'"),
    ("max_age_s = 3600", "max_age = 3600", "outbox.max_age", "'max_age_s'"),
    ("[paths]", "data_root = '/x'\n[paths]", "mqtt.data_root", "'paths.data_root'"),
    ("max_age_s = 3600", 'max_age_s = 3600\nlog_level = "info"', "outbox.log_level", "top-level 'log_level'"),
])
def test_unknown_keys_suggest_the_closest(tmp_path, old, new, key, suggestion):
    msg = error(tmp_path, edit(FULL, old, new))
    assert f"{key}: unknown key; did you mean {suggestion}" in msg, msg


def test_unknown_key_without_close_match_lists_known(tmp_path):
    msg = error(tmp_path, edit(FULL, "[outbox]", "[outbox]\nzzz = 1"))
    assert "outbox.zzz: unknown key; known keys here: max_bytes, max_age_s" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    text = edit(edit(FULL, 'fleet = "demo"', 'fleet = "a/b"'), "keepalive = 15", "keepalive = -1")
    msg = error(tmp_path, text)
    assert "2 problems" in msg and "fleet: " in msg and "mqtt.keepalive: " in msg


def test_toml_syntax_error_has_line(tmp_path):
    msg = error(tmp_path, edit(FULL, 'fleet = "demo"', "fleet = demo"))
    assert "not valid TOML" in msg and "line 2" in msg


def test_missing_file(tmp_path):
    with pytest.raises(AgentError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_python_310_without_tomli_says_what_to_install(tmp_path, monkeypatch):
    import ftedge.device_agent.config as config

    monkeypatch.setattr(config, "tomllib", None)
    with pytest.raises(AgentError, match="pip install tomli"):
        load_config(write(tmp_path, MINIMAL))


def test_agent_error_is_an_ftedge_error():
    assert issubclass(AgentError, FtedgeError)


# -- [deploy] (issue 12: signatures required by default, file:// roots, download limits) -----------------------


def test_deploy_defaults_require_signatures_and_refuse_file_urls(tmp_path):
    d = load_config(write(tmp_path, MINIMAL)).deploy
    assert d.require_signed is True and d.trusted_keys == () and d.file_root is None
    assert (d.max_bytes, d.deadline_s, d.keep_replaced) == (2 * 2**30, 1800, 2)


def test_deploy_table_loads(tmp_path):
    (tmp_path / "srv").mkdir()
    text = edit(FULL, 'trusted_keys = ["keys/fleet.pub"]\n', 'trusted_keys = ["keys/fleet.pub"]\nrequire_signed = false\n'
                'file_root = "srv"\nmax_bytes = 1000\ndeadline_s = 60\nkeep_replaced = 0\n')
    d = load_config(write(tmp_path, text)).deploy
    assert (d.require_signed, d.file_root, d.max_bytes, d.deadline_s, d.keep_replaced) == \
        (False, tmp_path.resolve() / "srv", 1000, 60, 0)


@pytest.mark.parametrize("line,key,words", [
    ('require_signed = "false"', "deploy.require_signed", "must be true or false"),
    ('file_root = "no/such/dir"', "deploy.file_root", "is not a folder"),
    ("max_bytes = 0", "deploy.max_bytes", "at least 1"),
    ("deadline_s = 0", "deploy.deadline_s", "at least 1"),
    ("keep_replaced = -1", "deploy.keep_replaced", "negative"),
    ("require_sign = true", "deploy.require_sign", "did you mean 'require_signed'"),
])
def test_invalid_deploy_values_name_the_key(tmp_path, line, key, words):
    msg = error(tmp_path, edit(FULL, 'trusted_keys = ["keys/fleet.pub"]\n', f'trusted_keys = ["keys/fleet.pub"]\n{line}\n'))
    assert f"{key}: " in msg and words in msg, msg


def test_limits_and_retention_defaults_and_values(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.mqtt.max_packet_size == 256 * 1024 and cfg.jobs.max_starts == 3
    r = cfg.retention
    assert (r.keep_runs, r.keep_versions, r.cache_max_bytes) == (20, 10, 512 * 1024 * 1024)
    text = edit(MINIMAL, 'url = "mqtt://127.0.0.1"', 'url = "mqtt://127.0.0.1"\nmax_packet_size = 65536')
    text += "[jobs]\nmax_starts = 5\n[retention]\nkeep_runs = 3\nkeep_versions = 4\ncache_max_bytes = 1000\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.mqtt.max_packet_size == 65536 and cfg.jobs.max_starts == 5
    assert (cfg.retention.keep_runs, cfg.retention.keep_versions, cfg.retention.cache_max_bytes) == (3, 4, 1000)
    assert cfg.to_public_dict()["retention"]["keep_runs"] == 3


@pytest.mark.parametrize("extra, key", [
    ("[jobs]\nmax_starts = 0\n", "jobs.max_starts"),
    ("[retention]\nkeep_versions = 0\n", "retention.keep_versions"),
    ("[retention]\nkeep_run = 3\n", "retention.keep_run"),
])
def test_invalid_limits_name_the_key(tmp_path, extra, key):
    assert key in error(tmp_path, MINIMAL + extra)


def test_ask_table_sets_the_token_bound_queue_and_deadline_and_names_a_bad_key(tmp_path):
    cfg = load_config(write(tmp_path, FULL + "\n[ask]\nmax_prompt_tokens = 300\nqueue = 0\ntoken_deadline_s = 2.5\n"))
    assert (cfg.ask.max_prompt_tokens, cfg.ask.queue, cfg.ask.token_deadline_s) == (300, 0, 2.5)
    assert cfg.to_public_dict()["ask"]["max_prompt_tokens"] == 300
    assert load_config(write(tmp_path, FULL)).ask.max_prompt_tokens == 1024
    for bad, key, words in (("max_prompt_tokens = 0", "ask.max_prompt_tokens", "at least 1"),
                            ("token_deadline_s = 0", "ask.token_deadline_s", "between 0.1 and 3600"),
                            ('queue = "4"', "ask.queue", "must be an integer")):
        msg = error(tmp_path, FULL + f"\n[ask]\n{bad}\n")
        assert f"{key}: " in msg and words in msg, msg
