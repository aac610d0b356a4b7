"""A secured platform end to end against the real broker: bootstrap, keys, login, signed events,
forged / unsigned / replayed events refused with their reason, roles, and what each user sees.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from control.client import Client
from control.client.keys import read_private_key, write_public_key
from control.config import Settings
from control.local.demo_models import build_onnx_classifier
from control.registrar import Registrar
from control.registry.events import ControlEvent
from control.registry.signing import new_key, public_key_of

pytestmark = pytest.mark.kafka


@pytest.fixture
def cli_at_home() -> bool:
    """Run the CLI as someone on their own machine: `home` holds their credentials file."""
    return True


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_secured_platform_from_bootstrap_to_roles(cli, settings: Settings,
                                                    tmp_path: Path) -> None:
    boot = json.loads(cli("bootstrap", "ann", "--json"))
    key = Path(boot["key_file"])
    assert boot["admin"] and mode(key) == 0o600 and key.is_relative_to(tmp_path / "ann")
    # Logged in: later commands act as ann without --user, and sign with her key.
    assert "signs with the registered key" in cli("whoami")
    assert "already has users" in cli("bootstrap", "mallory", home="mallory", ok=False)

    made = json.loads(cli("users", "create", "bob", "--key-out", str(tmp_path / "bob.key"),
                          "--json"))
    assert made["key_file"] == str(tmp_path / "bob.key") and mode(tmp_path / "bob.key") == 0o600
    printed = cli("users", "create", "vera")
    assert "private key written to" in printed and "mode 0600" in printed
    vera_key = tmp_path / "ann" / "keys" / f"{settings.namespace}-vera.key"
    assert mode(vera_key) == 0o600
    # A user who made their own key pair hands over only the public half.
    nina_key = new_key()
    cli("users", "create", "nina", "--public-key",
        str(write_public_key(public_key_of(nina_key), tmp_path / "nina.pub")))
    assert "no public key" in cli("users", "create", "eve", "--no-key", ok=False)

    assert "is not 'bob''s key" in cli("login", "bob", "--key-file", str(vera_key), home="bob",
                                       ok=False)
    cli("login", "bob", "--key-file", str(tmp_path / "bob.key"), home="bob")
    cli("login", "vera", "--key-file", str(vera_key), home="vera")

    cli("workspaces", "create", "fraud")
    cli("workspaces", "add-member", "bob")
    cli("workspaces", "add-member", "vera", "--role", "viewer")
    cli("models", "upload", "clf", str(build_onnx_classifier(tmp_path / "clf.onnx")),
        home="bob")
    cli("pipelines", "create", "scoring", home="bob")

    # A viewer reads, and only reads; a stranger sees nothing of the workspace.
    assert [m["name"] for m in json.loads(cli("models", "list", "--json", home="vera"))] \
        == ["clf"]
    assert "may only read" in cli("pipelines", "create", "x", home="vera", ok=False)
    assert "'nina' is not a member of workspace 'fraud'" in cli(
        "--user", "nina", "models", "list", home="nina", ok=False)
    cli("workspaces", "create", "other")
    assert [w["name"] for w in json.loads(cli("workspaces", "list", "--json", home="vera"))] \
        == ["fraud"]
    assert {w["name"] for w in json.loads(cli("workspaces", "list", "--json"))} \
        == {"fraud", "other"}
    assert "may not read" in cli("--workspace", "other", "models", "list", home="vera",
                                 ok=False)

    # Owners delete workspaces; collaborators do not.
    assert "needs an owner" in cli("--workspace", "other", "workspaces", "delete", "other",
                                   "--yes", home="bob", ok=False)
    cli("workspaces", "delete", "other", "--yes")
    assert "'other' was deleted" in cli("workspaces", "create", "other", ok=False)


def test_forged_unsigned_and_replayed_events_are_refused_and_change_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    registrar = Registrar(settings).start()
    try:
        ann = Client(settings, workspace="fraud")
        ann.bootstrap_admin("ann", email="ann@example.com", key_file=tmp_path / "ann.key")
        bob_key = tmp_path / "bob.key"
        ann.create_user_with_key("bob", key_file=bob_key)
        ann.create_user_with_key("carol", key_file=tmp_path / "carol.key")
        ann.create_workspace("fraud")
        ann.add_member("bob")
        bob = Client(settings, user="bob", workspace="fraud", key=bob_key)
        accepted = ControlEvent("CreatePipeline", {"name": "scoring", "description": None},
                                actor="bob", workspace="fraud").signed_with(
                                    read_private_key(bob_key))
        assert bob.publish(accepted.to_bytes(), accepted.event_id).accepted
        before = ann.registry()

        def refused(event: ControlEvent, *reasons: str) -> None:
            status = ann.publish(event.to_bytes(), event.event_id)
            assert not status.accepted
            for reason in reasons:
                assert reason in status.reason, status.reason

        pipeline = {"name": "evil", "description": None}
        refused(ControlEvent("CreatePipeline", pipeline, actor="bob", workspace="fraud"),
                "unsigned CreatePipeline", "'bob'")
        refused(ControlEvent("CreatePipeline", pipeline, actor="ann", workspace="fraud")
                .signed_with(read_private_key(bob_key)), "signed with the key of 'bob'")
        refused(accepted, "replayed event", accepted.event_id)
        refused(ControlEvent("CreatePipeline", pipeline, actor="carol", workspace="fraud")
                .signed_with(read_private_key(tmp_path / "carol.key")),
                "'carol' is not a member of workspace 'fraud'")
        # What each may see: others' e-mail addresses and statuses are not everyone's.
        assert {u.name: u.email for u in bob.users()}["ann"] is None
        assert {u.name: u.email for u in ann.users()}["ann"] == "ann@example.com"
        carol = Client(settings, user="carol", key=tmp_path / "carol.key")
        assert {s.actor for s in carol.statuses()} == {"carol"}
        assert {s.actor for s in bob.statuses()} == {"ann", "bob", "carol"}  # in fraud
        assert len(ann.statuses()) > len(bob.statuses())
        ann.deactivate_user("bob")
        after_deactivation = ann.registry()
        refused(ControlEvent("CreatePipeline", pipeline, actor="bob", workspace="fraud")
                .signed_with(read_private_key(bob_key)), "'bob' is deactivated")

        assert ann.registry() == after_deactivation
        assert {k: v for k, v in vars(after_deactivation).items() if k not in (
            "users", "applied")} == {k: v for k, v in vars(before).items() if k not in (
                "users", "applied")}
        assert len(after_deactivation.applied) == len(before.applied) + 1
    finally:
        registrar.stop()


def test_a_key_file_others_can_read_is_refused(cli, tmp_path: Path) -> None:
    boot = json.loads(cli("bootstrap", "ann", "--json"))
    Path(boot["key_file"]).chmod(0o644)

    assert "chmod 600" in cli("whoami", ok=False)
