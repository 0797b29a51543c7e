"""The operator's OpenSSH client config: read as OpenSSH reads it (checked against ``ssh -G`` on the same
files), explicit inventory keys win, ``drhost plan`` names the file and line of each setting, and a real
connection is made from what it says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drhost.cli import main as drhost_main
from drhost.config import load_config
from drhost.config._ssh_config import KEYWORDS, SshConfigError, lookup
from drhost.errors import ConfigError
from sshd_hosts import SshHost

SSH = shutil.which("ssh")

CONFIG = """\
# the operator's file: blocks, wildcards, a negation, '=' and quotes, tokens, an Include
Include {tmp}/conf.d/*.conf
Host db*  !db9
  HostName %h.example.net
  User=ops
  Port 2200
  IdentityFile "~/keys/id one"
Host web?
  hostname 10.0.0.%h
  ProxyJump jump@bastion:2222,inner
  ConnectTimeout 7
Match host db9
  User nine
  StrictHostKeyChecking no
Match exec "false"
  User never
Host *
  ServerAliveInterval 5
  ServerAliveCountMax 4
  StrictHostKeyChecking accept-new
  UserKnownHostsFile ~/.ssh/known_hosts_fleet /etc/ssh/other
"""
INCLUDED = """\
Host db2
  Port 2202
"""
ALIASES = ("db1", "db2", "db9", "webx", "other.example.org")


@pytest.fixture
def ssh_config(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-db2.conf").write_text(INCLUDED)
    path = tmp_path / "config"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return path


def openssh_says(path: Path, alias: str) -> dict[str, str]:
    assert SSH is not None
    out = subprocess.run([SSH, "-G", "-F", str(path), alias], capture_output=True, text=True, check=True,
                         timeout=30, stdin=subprocess.DEVNULL).stdout
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key.lower(), value)
    return found


@pytest.mark.skipif(SSH is None, reason="OpenSSH client not installed")
@pytest.mark.parametrize("alias", ALIASES)
def test_every_setting_is_what_openssh_itself_reads(ssh_config: Path, alias: str) -> None:
    """For each host the file describes, every keyword drhost takes has the value ``ssh -G`` prints for it."""
    ours = lookup(ssh_config, alias)
    theirs = openssh_says(ssh_config, alias)
    assert ours.settings, alias
    for keyword, setting in ours.settings.items():
        expected = theirs[keyword]
        if keyword in ("identityfile", "userknownhostsfile"):
            first = expected if keyword == "identityfile" else expected.split(" ")[0]
            expected = os.path.expanduser(first)
        if keyword == "stricthostkeychecking":
            expected = {"true": "yes", "false": "no"}.get(expected, expected)
        assert setting.value == expected, (alias, keyword)
    for keyword in ("hostname", "port"):
        if keyword in ours.settings:
            continue
        assert theirs[keyword] == {"hostname": alias, "port": "22"}[keyword]
    if "user" not in ours.settings:
        assert theirs["user"] not in ("ops", "nine", "never")


def test_where_each_setting_came_from_is_kept(ssh_config: Path, tmp_path: Path) -> None:
    """Each value names its file, line and block; an included file is named as itself; a Match drhost cannot
    judge is skipped and said."""
    db2 = lookup(ssh_config, "db2")
    assert db2.settings["port"].origin() == f"{tmp_path}/conf.d/10-db2.conf:2 (Host db2)"
    assert db2.settings["hostname"].origin() == f"{ssh_config}:4 (Host db*  !db9)".replace("  ", " ")
    assert db2.settings["hostname"].value == "db2.example.net"
    assert any("Match exec false (not evaluated by drhost" in skipped for skipped in db2.skipped)


def test_inventory_keys_win_and_plan_shows_each_settings_origin(ssh_config: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Keys the inventory sets are kept (host is looked up as ssh does: its HostName replaces it); the rest
    come from the ssh_config; plan names the inventory or the ssh_config file and line for each."""
    inventory = tmp_path / "hosts.ini"
    key = tmp_path / "key"
    key.write_text("not checked by plan\n")
    inventory.write_text(f"[target:db1]\ntransport = ssh\nhost = db1\nuser = admin\nroot = /opt/p\n"
                         f"key_file = {key}\nssh_config = {ssh_config}\n")
    config = load_config([inventory])
    target = config.data["targets"]["db1"]
    assert (target["host"], target["user"], target["port"]) == ("db1.example.net", "admin", 2200)
    assert target["host_key_policy"] == "accept-new" and target["heartbeat_s"] == 5.0
    assert target["dead_after_s"] == 20.0
    assert str(config.origin(("targets", "db1", "port"))) == f"{ssh_config}:6 (Host db* !db9): port (ssh_config)"
    assert str(config.origin(("targets", "db1", "user"))) == f"{inventory}: [target:db1] user"
    assert drhost_main(["plan", "-i", str(inventory), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["target_settings"]["db1"]
    assert shown["user"] == {"value": "admin", "from": f"{inventory}: [target:db1] user"}
    assert shown["port"]["value"] == 2200 and shown["port"]["from"].startswith(f"{ssh_config}:6")


def test_a_bad_ssh_config_is_a_config_error_naming_its_line(tmp_path: Path) -> None:
    """A value drhost cannot take, or a file it cannot read, is one error naming the file and line."""
    bad = tmp_path / "config"
    bad.write_text("Host *\n  StrictHostKeyChecking perhaps\n")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"[target:t]\ntransport = ssh\nhost = t\nroot = /opt/p\nssh_config = {bad}\n")
    with pytest.raises(ConfigError, match=rf"{bad}:2 \(Host \*\): StrictHostKeyChecking expected yes"):
        load_config([inventory])
    inventory.write_text(f"[target:t]\ntransport = ssh\nhost = t\nroot = /opt/p\nssh_config = {tmp_path}/nope\n")
    with pytest.raises(ConfigError, match=r"\[target:t\] ssh_config: expected an ssh_config drhost can read"):
        load_config([inventory])


def test_a_bad_ssh_config_value_is_said_in_the_operators_language(tmp_path: Path) -> None:
    """With zh_CN a value drhost cannot take from an ssh_config is refused in Chinese, quoting the file, line,
    keyword and value as they are; the English is the message drhost always gave."""
    from drhost.cli._errors import said
    from drhost.i18n import translator

    bad = tmp_path / "config"
    bad.write_text("Host *\n  Port abc\n")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"[target:t]\ntransport = ssh\nhost = t\nroot = /opt/p\nssh_config = {bad}\n")
    with pytest.raises(ConfigError) as caught:
        load_config([inventory])
    assert str(caught.value) == (f"{inventory}: [target:t] ssh_config: expected an ssh_config drhost can read, "
                                 f"found <{bad}:2 (Host *): port expected a positive whole number, found 'abc'>")
    assert said(caught.value, translator("zh_CN")) == (f"{inventory}: [target:t] ssh_config: 期望 drhost 能读取的 "
                                                       f"ssh_config, 实际为 <{bad}:2 (Host *): port 期望正整数, 实际为 "
                                                       "'abc'>")


def test_ssh_config_none_reads_nothing(ssh_config: Path, tmp_path: Path) -> None:
    """ssh_config = none: the target is exactly what the inventory says."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[target:db1]\ntransport = ssh\nhost = db1\nroot = /opt/p\nssh_config = none\n")
    assert load_config([inventory]).data["targets"]["db1"] == {"transport": "ssh", "host": "db1", "root": "/opt/p",
                                                             "ssh_config": "none"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400),
       alias=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True))
def test_any_text_is_read_or_refused_with_a_config_error(tmp_path: Path, text: str, alias: str) -> None:
    """Whatever a file holds, reading it gives settings or an SshConfigError, never another exception."""
    path = tmp_path / "random_config"
    path.write_text(text, encoding="utf-8")
    try:
        result = lookup(path, alias)
    except SshConfigError:
        return
    assert set(result.settings) <= set(KEYWORDS)


@pytest.mark.sshd
@pytest.mark.integration
def test_a_target_named_only_by_its_alias_is_reached_with_the_ssh_configs_settings(
        host: SshHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An inventory that names a host alias and its root only: address, port, user, key and known_hosts come
    from the ssh_config, and a real login works with them."""
    config = tmp_path / "ssh_config"
    config.write_text(f"Host dr-alias\n  HostName {host.host}\n  Port {host.port}\n  User root\n"
                      f"  IdentityFile {host.client_key}\n  UserKnownHostsFile {host.known_hosts}\n")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"[target:db1]\ntransport = ssh\nhost = dr-alias\nroot = {host.root}\n"
                         f"ssh_config = {config}\n")
    code = drhost_main(["doctor", "-i", str(inventory), "--target", "db1", "--json"])
    checks = json.loads(capsys.readouterr().out)["targets"]["db1"]
    assert code == 0, checks
    assert checks[0]["detail"].startswith(f"ssh root@{host.host}:{host.port}")
