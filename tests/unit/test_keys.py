"""Key files (lines and YAML), roles, model limits, default limits, and errors that never show a key."""

import pytest

from tenants.keys import KeyFileError, KeyLimits, KeyStore, build_key_ring, read_key_file


def test_line_format_with_models_role_label_and_limits(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# comment\nsk-old gemma,smol\nsk-ops role=admin label=ops\n"
                    "sk-bob smol role=user label=bob rpm=30 tpm=1000 streams=2 request_tokens=512\n")
    ring = build_key_ring([], [], path, KeyLimits())
    old, ops, bob = (ring.tenant_for(k) for k in (b"sk-old", b"sk-ops", b"sk-bob"))
    assert old.role == "user" and old.models == {"gemma", "smol"} and old.label == "key-1"
    assert ops.is_admin and ops.models is None and ops.may_use("anything")
    assert bob.limits == KeyLimits(requests_per_minute=30, tokens_per_minute=1000, max_streams=2,
                                   max_request_tokens=512)
    assert bob.may_use("x", ("smol",)) and not bob.may_use("gemma")
    assert ring.tenant_for(b"sk-nope") is None and ring.tenant_for(None) is None


def test_yaml_format_and_flag_keys_with_default_limits(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - {key: sk-a, label: alice, limits: {max_streams: 3}}\n"
                    "  - {key: sk-root, role: admin, label: root}\n")
    ring = build_key_ring(["sk-flag-admin"], ["sk-flag-user"], path, KeyLimits(max_streams=1, tokens_per_minute=9))
    alice = ring.tenant_for(b"sk-a")
    assert alice.limits.max_streams == 3 and alice.limits.tokens_per_minute == 9  # its own, then the default
    assert ring.tenant_for(b"sk-flag-admin").label == "admin-1" and ring.tenant_for(b"sk-flag-user").role == "user"
    assert ring.has_admin and ring.labels() == ["admin-1", "user-1", "alice", "root"]


@pytest.mark.parametrize("text", ["sk-secret-1 role=root", "sk-secret-1 colour=blue", "sk-secret-1 rpm=-3"])
def test_bad_lines_name_the_line_never_the_key(tmp_path, text):
    path = tmp_path / "keys.txt"
    path.write_text("\n" + text + "\n")
    with pytest.raises(KeyFileError) as error:
        read_key_file(path)
    assert "line 2" in str(error.value) and "sk-secret-1" not in str(error.value)


def test_store_reloads_and_describes_roles_without_keys(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-user-1 label=u\n")
    store = KeyStore([], [], path, KeyLimits())
    assert "No admin key" in store.describe() and "sk-user" not in store.describe()
    path.write_text("sk-user-1 label=u\nsk-admin-1 role=admin label=a\n")
    store.reload()
    assert store.ring.has_admin and store.describe() == "API keys: u (user), a (admin)."
    assert KeyStore([], [], None, KeyLimits()).ring.open
