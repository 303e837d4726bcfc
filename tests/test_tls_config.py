"""TLS and listener-limit settings: loading, validation and the self-signed certificate."""
from __future__ import annotations

import ssl

import pytest

from runtime.local_cluster import node_configs
from runtime.node import NodeConfig, http_client_ssl
from runtime.tls import client_ssl, ensure_self_signed, server_context


def test_limits_come_from_env_and_are_checked() -> None:
    cfg = NodeConfig.load(env={"CHORUS_MQTT_CONNECTIONS_MAX": "7", "CHORUS_HTTP_BODY_BYTES_MAX": "4096"})
    assert (cfg.mqtt_connections_max, cfg.http_body_bytes_max) == (7, 4096)
    with pytest.raises(ValueError, match="client_connections_max must be in"):
        NodeConfig.load(env={}, client_connections_max=0)
    with pytest.raises(ValueError, match="one request must fit"):
        NodeConfig.load(env={}, client_frame_bytes_max=1 << 20, client_inflight_bytes_max=4096)


def test_tls_settings_are_checked(tmp_path) -> None:
    cert, key = ensure_self_signed(tmp_path)
    cfg = NodeConfig.load(env={"CHORUS_TLS_CERT_FILE": cert, "CHORUS_TLS_KEY_FILE": key})
    assert cfg.tls and http_client_ssl(cfg) is not None
    assert http_client_ssl(NodeConfig.load(env={})) is None
    with pytest.raises(ValueError, match="go together"):
        NodeConfig.load(env={}, tls_cert_file=cert)
    with pytest.raises(ValueError, match="no such file"):
        NodeConfig.load(env={}, tls_cert_file=str(tmp_path / "none.pem"), tls_key_file=key)
    with pytest.raises(ValueError, match="TLS is not"):
        NodeConfig.load(env={}, tls_ca_file=cert)
    assert NodeConfig.load(env={"CHORUS_TLS_SELF_SIGNED": "true"}).tls


def test_self_signed_certificate_is_made_once_and_serves(tmp_path) -> None:
    cert, key = ensure_self_signed(tmp_path)
    first = open(cert).read()
    assert ensure_self_signed(tmp_path) == (cert, key) and open(cert).read() == first  # reused
    ctx = server_context(cert, key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_ssl(False, None) is None
    assert client_ssl(True, cert).check_hostname
    own = ssl.create_default_context()
    assert client_ssl(own, None) is own


def test_a_local_cluster_shares_one_self_signed_certificate(tmp_path) -> None:
    cfgs = node_configs(NodeConfig(data_dir=str(tmp_path), tls_self_signed=True), 3)
    assert len({c.tls_cert_file for c in cfgs}) == 1 and all(c.tls for c in cfgs)
    assert cfgs[0].tls_cert_file.startswith(str(tmp_path))


def test_brokerctl_trusts_the_certificate_of_a_node_started_here_also_for_an_https_url(tmp_path, monkeypatch):
    import json
    import subprocess

    from runtime.admin_cli import _tls_for

    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    cert, key = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    (data / "node.pid").write_text(json.dumps({"http": "127.0.0.1:27181", "tls_ca_file": str(cert)}))
    monkeypatch.chdir(tmp_path)
    for url in ("http://127.0.0.1:27181", "https://127.0.0.1:27181"):
        got, ctx = _tls_for(url, False, None)
        assert got == "https://127.0.0.1:27181" and ctx is not None
        assert any(c.get("subject") == ((("commonName", "127.0.0.1"),),) for c in ctx.get_ca_certs()), url
    assert _tls_for("http://127.0.0.1:9", False, None) == ("http://127.0.0.1:9", None)  # another node: plain
