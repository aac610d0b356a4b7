"""Transport settings (no broker): what every Kafka client is given, and that no secret is
ever shown — not by Settings, not in a configuration error."""

from __future__ import annotations

import pytest

from control.cli import main
from control.config import Settings
from control.kafka import faust_broker_options
from schemas.errors import ConfigError

PASSWORD = "s3cret-Kafka-pw"
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "ops", "sasl_password": PASSWORD}


def test_plaintext_is_the_laptop_default() -> None:
    assert Settings(bootstrap_servers="b:9092").kafka_config() == {"bootstrap.servers": "b:9092"}
    assert faust_broker_options(Settings(bootstrap_servers="a:1, b:2")) == {
        "broker": ["kafka://a:1", "kafka://b:2"]}


def test_sasl_over_tls_reaches_every_confluent_client(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    config = Settings(**SASL, ssl_ca_location=ca).kafka_config()

    assert config == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "ops", "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https",
    }


def test_the_faust_app_gets_the_same_credentials() -> None:
    import faust

    options = faust_broker_options(Settings(**SASL))
    credentials = options["broker_credentials"]

    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value,
            credentials.protocol.value) == ("ops", PASSWORD, "SCRAM-SHA-512", "SASL_SSL")
    assert credentials.ssl_context is not None and credentials.ssl_context.check_hostname
    assert PASSWORD not in repr(credentials)
    tls = faust_broker_options(Settings(security_protocol="SSL"))["broker_credentials"]
    assert isinstance(tls, faust.SSLCredentials)


@pytest.mark.parametrize(("settings", "message"), [
    ({"security_protocol": "SASL_SSL"}, "needs INFERSTREAM_SASL_MECHANISM"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "INFERSTREAM_SASL_PASSWORD"),
    ({"sasl_username": "u", "sasl_password": PASSWORD}, "security protocol is PLAINTEXT"),
])
def test_incomplete_security_settings_say_what_is_missing(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings(**settings).kafka_config()
    assert PASSWORD not in str(caught.value)


def test_settings_never_show_a_secret() -> None:
    s = Settings(**SASL, ssl_key_password="key-Passphrase-9",
                 clickhouse_url="https://etl:ch-Secret-7@db:8443/prod?ca_cert=/ca.pem")

    for shown in (repr(s), str(s), s.model_dump_json()):
        for secret in (PASSWORD, "key-Passphrase-9"):
            assert secret not in shown
    assert "ch-Secret-7" not in repr(s) and "etl:***@db:8443" in repr(s)


def test_a_bad_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INFERSTREAM_MAX_ARTIFACT_BYTES", PASSWORD)
    monkeypatch.setenv("INFERSTREAM_SECURITY_PROTOCOL", "SASL_SSL-" + PASSWORD)

    with pytest.raises(SystemExit) as exit_info:
        main(["users", "list"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "INFERSTREAM_MAX_ARTIFACT_BYTES" in err and "INFERSTREAM_SECURITY_PROTOCOL" in err
    assert PASSWORD not in err
