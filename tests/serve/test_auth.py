"""Tenants and tokens, TLS and mTLS, and the open-server rule, on real servers with the tiny models."""

import datetime
import ipaddress
import json

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from serve import cli as serve_cli
from serve.api import pb2
from serve.auth import TlsConfig, TokenAuth, add_token
from serve.server import create_server, is_loopback

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def status_of(fn):
    try:
        result = fn()
        if hasattr(result, "__iter__") and not isinstance(result, (list, dict, str)):
            list(result)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens.json"
    return path, {"acme": add_token(path, "acme"), "globex": add_token(path, "globex")}


def test_token_add_prints_the_token_once_and_stores_only_a_salted_hash(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    assert serve_cli.main(["token", "add", "--tenant", "acme", "--tokens-file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert serve_cli.main(["token", "add", "--tenant", "acme", "--tokens-file", str(path)]) == 0
    second = capsys.readouterr().out.strip()
    text = path.read_text()
    assert token.startswith("e4t_") and token != second
    assert token.split("_", 2)[2] not in text and second.split("_", 2)[2] not in text
    entries = json.loads(text)["tokens"]
    assert [e["tenant"] for e in entries] == ["acme", "acme"] and entries[0]["salt"] != entries[1]["salt"]
    assert path.stat().st_mode & 0o077 == 0
    auth = TokenAuth(path)
    assert auth.tenant_of(token) == auth.tenant_of(second) == "acme"
    assert serve_cli.main(["token", "add", "--tenant", "bad tenant!", "--tokens-file", str(path)]) == 2
    assert "tenant has to be" in capsys.readouterr().err


def test_tokens_from_the_environment(tokens, monkeypatch):
    path, made = tokens
    monkeypatch.setenv("E4T_TOKENS", path.read_text())
    assert TokenAuth.from_env().tenant_of(made["globex"]) == "globex"


def test_no_or_bad_token_is_unauthenticated_and_health_stays_open(make_served, tokens):
    path, made = tokens
    served = make_served(auth=TokenAuth(path), client={"token": ""})
    served.client.wait_ready(60)  # health needs no token: orchestrators probe it
    stub = served.client.stub
    code, details = status_of(lambda: stub.ListDomains(pb2.ListDomainsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
    forged = made["acme"][:-2] + ("AA" if not made["acme"].endswith("AA") else "BB")
    for token in (forged, "e4t_000000000000_x", "nonsense"):
        code, details = status_of(lambda t=token: served.connect(token=t).list_domains())
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid."), token
    metadata = (("authorization", "Basic abc"),)
    code, details = status_of(lambda: stub.ListDomains(pb2.ListDomainsRequest(), metadata=metadata, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer <token>" in details
    assert [d["name"] for d in served.connect(token=made["acme"]).list_domains()] == ["faces"]


def test_no_tenant_sees_another_tenants_concepts_over_any_rpc(make_served, tokens, png):
    path, made = tokens
    served = make_served(auth=TokenAuth(path))
    served.client.wait_ready(60)
    acme, globex = served.connect(token=made["acme"]), served.connect(token=made["globex"])
    concept = acme.personalize(png(), "faces", steps=0)
    assert concept["owner"] == "acme"
    theirs = globex.personalize(png(seed=2), "faces", steps=0)
    cid, missing = concept["id"], "c_000000000000"

    def as_globex(concept_id):
        prompt = f"a photo of {{{concept_id}}}"
        return {
            "get": status_of(lambda: globex.get_concept(concept_id)),
            "delete": status_of(lambda: globex.delete_concept(concept_id)),
            "generate": status_of(lambda: globex.generate(prompt, num_images=1, steps=1)),
            "negative": status_of(lambda: globex.generate("a face", negative_prompt=prompt, num_images=1, steps=1)),
        }

    # word for word what a concept that does not exist gets: no hint that the id is taken
    expected = {k: (NOT_FOUND, d.replace(missing, cid)) for k, (_, d) in as_globex(missing).items()}
    assert all(code == NOT_FOUND for code, _ in expected.values())
    assert as_globex(cid) == expected
    assert [c["id"] for c in globex.list_concepts()] == [theirs["id"]]
    assert [c["id"] for c in acme.list_concepts()] == [cid]
    assert acme.get_concept(cid) == concept  # still there: globex's delete did nothing
    assert len(list(acme.generate(f"{{{cid}}}", num_images=1, steps=1))) == 1
    code, details = status_of(lambda: globex.personalize(png(), "faces", steps=0, owner="acme"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "your tenant 'globex'" in details


def make_pki(tmp_path):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name, key, issuer_name, issuer_key, *, ca=False, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem, key, certificate):
        (tmp_path / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (tmp_path / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e4t test CA")])
    write("ca", ca_key, cert("e4t test CA", ca_key, ca_name, ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    write("server", server_key, cert("localhost", server_key, ca_name, ca_key, san=san))
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", client_key, cert("client", client_key, ca_name, ca_key))
    other_ca = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    write("stranger", client_key, cert("stranger", client_key, other_name, other_ca))
    return tmp_path


def test_tls_with_client_certificates(make_served, tmp_path):
    pki = make_pki(tmp_path)
    tls = TlsConfig(pki / "server.pem", pki / "server.key", client_ca=pki / "ca.pem")
    served = make_served(tls=tls, client={"tls_ca": pki / "ca.pem", "tls_cert": pki / "client.pem",
                                          "tls_key": pki / "client.key"})  # fmt: skip
    served.client.wait_ready(60)
    assert [d["name"] for d in served.client.list_domains()] == ["faces"]
    plaintext = served.connect()
    assert status_of(lambda: plaintext.list_domains())[0] == grpc.StatusCode.UNAVAILABLE
    no_cert = served.connect(tls_ca=pki / "ca.pem")
    assert status_of(lambda: no_cert.list_domains())[0] == grpc.StatusCode.UNAVAILABLE
    stranger = served.connect(tls_ca=pki / "ca.pem", tls_cert=pki / "stranger.pem", tls_key=pki / "client.key")
    assert status_of(lambda: stranger.list_domains())[0] == grpc.StatusCode.UNAVAILABLE


def test_tls_with_tokens_and_the_client_cli(make_served, tmp_path, tokens, capsys):
    from serve import client_cli

    pki = make_pki(tmp_path)
    path, made = tokens
    served = make_served(tls=TlsConfig(pki / "server.pem", pki / "server.key"), auth=TokenAuth(path),
                         client={"tls_ca": pki / "ca.pem", "token": made["acme"]})  # fmt: skip
    served.client.wait_ready(60)
    flags = ["--address", f"localhost:{served.port}", "--tls-ca", str(pki / "ca.pem")]
    assert client_cli.main([*flags, "--token", made["acme"], "domains"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "faces"
    assert client_cli.main([*flags, "domains"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_an_open_server_binds_loopback_only(tiny_base_dir, tiny_pack_path, tmp_path, tokens):
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("[::]")
    with pytest.raises(ValueError, match="without authentication.*--insecure-open"):
        create_server(lambda: None, "0.0.0.0:0")
    server, _ = create_server(lambda: None, "0.0.0.0:0", auth=TokenAuth(tokens[0]))
    server.stop(0)
    server, _ = create_server(lambda: None, "0.0.0.0:0", insecure_open=True)
    server.stop(0)
