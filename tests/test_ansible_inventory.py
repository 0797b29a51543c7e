"""Ansible inventories: drhost reads Ansible's own examples as ``ansible-inventory`` does (hosts, groups,
variables), selects with ``--limit`` as ``ansible --list-hosts`` does, maps the connection variables to
targets, refuses what it cannot honour (secrets inline, templates, other connections), and drives a real
sshd host described by one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drhost.cli import main as drhost_main
from drhost.config import load_config
from drhost.config._ansible import InventoryError, expand_range, match_pattern, read_inventory
from drhost.errors import ConfigError
from sshd_hosts import SshHost

DATA = Path(__file__).parent / "data" / "ansible"
FILES = sorted(path for path in DATA.iterdir() if path.name != "README.md")
BIN = Path(sys.executable).parent
ANSIBLE_INVENTORY = shutil.which("ansible-inventory", path=str(BIN)) or shutil.which("ansible-inventory")
ANSIBLE = shutil.which("ansible", path=str(BIN)) or shutil.which("ansible")
needs_ansible = pytest.mark.skipif(ANSIBLE_INVENTORY is None or ANSIBLE is None,
                                   reason="ansible-core is not installed (the test extras install it)")
QUIET = {"ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
         "ANSIBLE_NOCOLOR": "1", "PYTHONWARNINGS": "ignore"}


def ansible_run(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env={**os.environ, **QUIET},
                          stdin=subprocess.DEVNULL)


def plain(value: Any) -> Any:
    """ansible-inventory's JSON with its "unsafe" text markers taken off."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def their_members(listing: dict[str, Any], group: str) -> set[str]:
    node = listing.get(group, {})
    found = set(node.get("hosts", []))
    for child in node.get("children", []):
        found |= their_members(listing, child)
    return found


@needs_ansible
@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_an_inventory_reads_as_ansible_inventory_reads_it(path: Path) -> None:
    """Every host, every group's members and every host's merged variables equal ``ansible-inventory
    --list``'s for the same file; a file Ansible refuses, drhost refuses too."""
    assert ANSIBLE_INVENTORY is not None
    listed = ansible_run(ANSIBLE_INVENTORY, "-i", str(path), "--list")
    if "Unable to parse" in listed.stderr:
        with pytest.raises(InventoryError):
            read_inventory(path)
        return
    theirs = plain(json.loads(listed.stdout))
    ours = read_inventory(path)
    assert set(ours.host_vars) == their_members(theirs, "all")
    for group in theirs:
        if group != "_meta":
            assert set(ours.members(group)) == their_members(theirs, group), group
    for host in ours.host_vars:
        assert ours.variables(host) == theirs["_meta"]["hostvars"].get(host, {}), host


PATTERNS = ["all", "webservers", "webservers:dbservers", "webservers,dbservers", "webservers:&east", "all:!prod",
            "prod:&dbservers:!two.example.com", "*.example.com", "one*", "~(foo|one)\\.example", "!west",
            "mail.example.com", "dbservers[0]", "dbservers[-1]", "dbservers[0:1]", "e*:!foo*"]


@needs_ansible
@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_limit_pattern_selects_what_ansible_selects(pattern: str) -> None:
    """Groups, hosts, wildcards, regexes, subscripts, unions, intersections and exclusions select the hosts
    ``ansible PATTERN --list-hosts`` lists, in its order."""
    assert ANSIBLE is not None
    path = DATA / "docs_multiple_groups.yml"
    listed = ansible_run(ANSIBLE, pattern, "-i", str(path), "--list-hosts")
    lines = listed.stdout.splitlines()
    theirs = [line.strip() for line in lines[1:]] if lines and lines[0].strip().startswith("hosts (") else []
    inventory = read_inventory(path)
    groups = {name: inventory.members(name) for name in inventory.groups}
    assert match_pattern(pattern, list(inventory.host_vars), groups) == theirs


def test_host_ranges_expand_as_documented() -> None:
    """Numeric ranges keep their zero padding, a stride skips, letters run inclusive; a backwards range is
    refused."""
    assert expand_range("www[01:03].example.com") == ["www01.example.com", "www02.example.com", "www03.example.com"]
    assert expand_range("www[01:50:2].example.com")[:3] == ["www01.example.com", "www03.example.com",
                                                            "www05.example.com"]
    assert len(expand_range("www[01:50:2].example.com")) == 25
    assert expand_range("db-[a:c].example.com") == ["db-a.example.com", "db-b.example.com", "db-c.example.com"]
    with pytest.raises(InventoryError, match="the start is after the end"):
        expand_range("db[9:1]")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_connection_variables_become_target_keys_with_their_origin(tmp_path: Path) -> None:
    """ansible_host/port/user/key, become, a ProxyJump in ansible_ssh_common_args and drhost_* variables
    give the target's keys, each naming the variable it came from; groups give the rollout group."""
    key = write(tmp_path, "id", "key\n")
    inventory = write(tmp_path, "hosts.yml", f"""
all:
  vars:
    drhost_root: /opt/drproduct
    ansible_user: drops
    ansible_ssh_private_key_file: {key}
  children:
    standby:
      hosts:
        db[1:2]:
          ansible_host: 10.0.0.1
          ansible_become: yes
          ansible_become_user: dbadmin
          ansible_ssh_common_args: -o ProxyJump=jump@bastion:2222 -o StrictHostKeyChecking=no
    primary:
      hosts:
        pdb: {{ansible_port: 2200, drhost_become_password_env: PDB_SUDO, ansible_become: true}}
""")
    config = load_config([inventory], ["rollout.groups=standby, primary"])
    targets = config.data["targets"]
    assert list(targets) == ["db1", "db2", "pdb"]
    assert targets["db1"] == {"transport": "ssh", "host": "10.0.0.1", "user": "drops", "key_file": str(key),
                              "become": "sudo", "become_user": "dbadmin", "proxy_jump": "jump@bastion:2222",
                              "host_key_policy": "accept-new", "root": "/opt/drproduct", "group": "standby"}
    assert targets["pdb"]["port"] == 2200 and targets["pdb"]["become_password_env"] == "PDB_SUDO"
    assert targets["pdb"]["host"] == "pdb" and targets["pdb"]["group"] == "primary"
    assert str(config.origin(("targets", "db1", "proxy_jump"))) == f"{inventory}: [host db1] ansible_ssh_common_args"


@pytest.mark.parametrize(("body", "says"), [
    ("h1 ansible_become_password=hunter2 drhost_root=/opt/p\n", "drhost_become_password_env"),
    ("h1 ansible_password=hunter2 drhost_root=/opt/p\n", "drhost_password_env"),
    ("h1 ansible_connection=winrm drhost_root=/opt/p\n", "over ssh or local only"),
    ("h1 ansible_become=yes ansible_become_method=su drhost_root=/opt/p\n", "with sudo only"),
    ("h1 ansible_host='{{ lookup(\"env\", \"H\") }}' drhost_root=/opt/p\n", "Jinja2 template"),
    ("[a:children]\nnot_defined\n", "undefined group 'not_defined'"),
    ("[web]\nwww[3:1]\n", "the start is after the end"),
])
def test_what_drhost_cannot_honour_is_refused_by_name(tmp_path: Path, body: str, says: str) -> None:
    """An inventory with an inline secret, a template, another connection or become method, or a broken
    group or range is one config error naming the file and what to do; no secret is repeated."""
    inventory = write(tmp_path, "hosts", body)
    with pytest.raises(ConfigError) as caught:
        load_config([inventory])
    assert str(inventory) in str(caught.value) and says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_bad_inventory_is_said_in_the_operators_language(tmp_path: Path) -> None:
    """With zh_CN a bad inventory is refused in Chinese, quoting the file, the line and the offending text as
    they are (and YAML's place of a problem); in English the message is the one drhost always gave."""
    import os

    def plan(inventory: Path, lang: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANG": lang, "LC_ALL": "", "LC_MESSAGES": "", "DRHOST_STATE_DIR": str(tmp_path)}
        return subprocess.run([sys.executable, "-m", "drhost", "plan", "-i", str(inventory)], capture_output=True,
                              text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)

    bad = write(tmp_path, "bad.ini", "[web]\nh1 junk\n")
    english, chinese = plan(bad, "C"), plan(bad, "zh_CN.UTF-8")
    assert english.returncode == chinese.returncode == 2
    assert english.stderr == (f"drhost: error: {bad}: expected an Ansible inventory drhost can read, found "
                              "<line 2: expected KEY=VALUE after the host, found 'junk'>\n")
    assert chinese.stderr == f"drhost: 错误: {bad}: 期望 drhost 能读取的 Ansible 清单, 实际为 <第 2 行: 主机之后期望 " \
                             "KEY=VALUE, 实际为 'junk'>\n"
    from drhost.cli._errors import said
    from drhost.i18n import translator

    yaml_file = write(tmp_path, "bad.yml", "all:\n  children:\n    web:\n      hosts:\n        h1:abc:\n")
    with pytest.raises(ConfigError) as caught:
        load_config([yaml_file])
    assert str(caught.value) == (f"{yaml_file}: expected an Ansible inventory drhost can read, found "
                                 "<group all > web: port 'abc' of host 'h1' is not a port number>")
    assert said(caught.value, translator("zh_CN")) == (f"{yaml_file}: 期望 drhost 能读取的 Ansible 清单, 实际为 "
                                                       "<分组 all > web: 主机 'h1' 的端口 'abc' 不是有效的端口号>")


def test_limit_that_selects_nothing_names_the_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit with a pattern that matches no target: exit 2, the pattern and the targets named."""
    inventory = write(tmp_path, "hosts", "[web]\nw1 drhost_root=/opt/p\nw2 drhost_root=/opt/p\n")
    assert drhost_main(["plan", "-i", str(inventory), "--limit", "db*"]) == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "'db*'" in err and "w1, w2" in err
    assert drhost_main(["plan", "-i", str(inventory), "--limit", "web:!w1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == ["w2"]


@pytest.fixture
def host(login_host: SshHost) -> SshHost:
    return login_host


@pytest.mark.sshd
@pytest.mark.integration
def test_a_host_of_an_ansible_inventory_is_reached_and_become_works(host: SshHost, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A YAML inventory in Ansible's words (ansible_host, ansible_port, ansible_user, the key, become) takes
    drhost to a real sshd that refuses root, as the login user, becoming root."""
    inventory = write(tmp_path, "hosts.yml", f"""
dr_fleet:
  hosts:
    db1:
      ansible_host: {host.host}
      ansible_port: {host.port}
      ansible_user: {host.login_user}
      ansible_ssh_private_key_file: {host.client_key}
      ansible_become: true
      drhost_known_hosts: {host.known_hosts}
      drhost_root: {host.root}
""")
    code = drhost_main(["doctor", "-i", str(inventory), "--target", "db1", "--json"])
    checks = {check["name"]: check for check in json.loads(capsys.readouterr().out)["targets"]["db1"]}
    assert code == 0, checks
    assert checks["login"]["detail"].startswith(f"ssh {host.login_user}@{host.host}:{host.port}, sudo to root")
    assert checks["become"]["ok"] is True


def test_an_inventory_is_told_from_drhosts_own_ini(tmp_path: Path) -> None:
    """Ansible's files (YAML, INI with groups, vars or only hosts) are Ansible's; drhost's INI, even with a
    misspelt section, and anything that is not a regular file are left to drhost's own reader."""
    import os

    from drhost.config._ansible import is_ansible_inventory

    assert all(is_ansible_inventory(path) for path in FILES)
    assert not is_ansible_inventory(write(tmp_path, "ops.ini", "[clas:core]\nmemory_mb = 64\n"))
    assert not is_ansible_inventory(write(tmp_path, "typo.ini", "[runn]\nforks = 2\n"))
    assert not is_ansible_inventory(write(tmp_path, "drhost.ini", "[target:t1]\ntransport=local\nroot=/opt/p\n"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not is_ansible_inventory(fifo)  # and it did not block on the pipe
    assert not is_ansible_inventory(tmp_path)
