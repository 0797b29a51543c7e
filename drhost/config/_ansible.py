"""Ansible inventories (INI and YAML) as drhost targets, and Ansible's host patterns for ``--limit``.

The reading follows Ansible's own inventory plugins, and the tests compare the hosts, groups and variables
found with what ``ansible-inventory --list`` reports for the same files (examples from Ansible's
documentation and test data, kept under tests/data/ansible/):

- groups and ``children`` (a group's hosts include its children's), the implicit ``all`` and
  ``ungrouped``; host ranges (``db[01:20].example``, ``[a:f]``, a stride ``[1:50:2]``); ``host:port``;
- INI: host-line values are Python literals (``ast.literal_eval``, else the text), ``[group:vars]`` values
  are text; YAML: values as YAML has them;
- variables merge from ``all`` to parent to child group to host; groups of one depth by
  ``ansible_group_priority``, then by name.

drhost does not run Jinja2 templates, read ``group_vars``/``host_vars`` directories or vaults, or run dynamic
inventory scripts: a ``{{ }}`` value is kept as text (and refused where drhost would use it).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import string
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import Phrase, WordedError, message_phrase, phrase

__all__ = ["AnsibleInventory", "InventoryError", "host_target", "is_ansible_inventory", "match_pattern",
           "read_inventory"]

_RANGE = re.compile(r"\[(?P<start>[0-9a-zA-Z]+):(?P<end>[0-9a-zA-Z]+)(?::(?P<step>[0-9]+))?\]")
_SECTION = re.compile(r"^\[(?P<name>[^\]:\s]+)(?::(?P<kind>[^\]\s]+))?\]\s*$")
#: Sections of drhost's own INI: a file with one of them is drhost's, not Ansible's.
DRHOST_SECTIONS = re.compile(r"^\[(run|rollout|timeouts|watchdog|container|process|discovery|package|"
                             r"(target|class|stage|plugin|ssh):[^\]]+)\]\s*$", re.MULTILINE)


class InventoryError(WordedError, ValueError):
    """An inventory drhost cannot read: the message names the file, the line or group, and what is wrong."""

    #: The file the message starts with (raised :meth:`at`), and its line (None: the file as a whole).
    file: str | None = None
    line: int | None = None
    #: What is wrong there: the message after ``FILE:LINE: `` (a phrase where drhost worded it).
    problem: str = ""

    @classmethod
    def at(cls, file: Path | str, line: int | None, problem: str) -> InventoryError:
        """The error ``FILE:LINE: PROBLEM`` (``FILE: PROBLEM`` without a line), keeping the file, the line and the
        problem apart: a message that names the file already (the loader's) says only the line and the problem."""
        error = cls.worded("{where}: {problem}", where=f"{file}:{line}" if line is not None else str(file),
                           problem=problem)
        error.file, error.line, error.problem = str(file), line, problem
        return error


def _as_phrase(text: str) -> Phrase:
    """``text`` as a phrase, so that a constant (a message id marked ``N_`` where it was written) is said in the
    operator's language where it is a field."""
    return text if isinstance(text, Phrase) else phrase(text.replace("{", "{{").replace("}", "}}"))


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnsibleInventory:
    """Hosts with their own variables, and groups, in the order the file gives them."""

    path: Path
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
        return self.groups[name]

    def add_host(self, group: str, host: str, variables: Mapping[str, Any]) -> None:
        self.host_vars.setdefault(host, {}).update(variables)
        members = self.group(group).hosts
        if host not in members:
            members.append(host)

    def finish(self) -> None:
        """The implicit groups: ``all`` holds every top-level group, ``ungrouped`` the hosts in no group."""
        top = self.group("all")
        self.group("ungrouped")
        children = {child for group in self.groups.values() for child in group.children}
        for name in self.groups:
            if name != "all" and name not in children and name not in top.children:
                top.children.append(name)
        grouped = {host for name, group in self.groups.items() if name not in ("all", "ungrouped")
                   for host in group.hosts}
        for host in self.host_vars:
            if host not in grouped and host not in top.hosts and host not in self.groups["ungrouped"].hosts:
                self.groups["ungrouped"].hosts.append(host)
        self._check_cycles()

    def _check_cycles(self) -> None:
        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise InventoryError.at(self.path, None, phrase("group {group} is its own descendant ({path})",
                                                                group=name, path=" > ".join((*path, name))))
            for child in self.groups[name].children:
                visit(child, (*path, name))

        visit("all", ())

    def members(self, name: str) -> list[str]:
        """Every host of group ``name``, its children's included, each once, in file order."""
        found: list[str] = []
        seen_groups: set[str] = set()

        def walk(group: str) -> None:
            if group in seen_groups:
                return
            seen_groups.add(group)
            for host in self.groups[group].hosts:
                if host not in found:
                    found.append(host)
            for child in self.groups[group].children:
                walk(child)

        walk(name)
        if name == "all":
            found += [host for host in self.host_vars if host not in found]
        return found

    def groups_of(self, host: str) -> list[str]:
        """The groups ``host`` belongs to (directly or through a child), ``all`` first."""
        return [name for name in self.groups if host in self.members(name)]

    def _depths(self) -> dict[str, int]:
        depth = {"all": 0}
        changed = True
        while changed:
            changed = False
            for name, group in self.groups.items():
                for child in group.children:
                    if name in depth and depth.get(child, -1) < depth[name] + 1:
                        depth[child] = depth[name] + 1
                        changed = True
        for name in self.groups:
            depth.setdefault(name, 1)
        return depth

    def variables(self, host: str) -> dict[str, Any]:
        """``host``'s variables as Ansible flattens them: groups from ``all`` down, then the host's own."""
        depth = self._depths()

        def priority(name: str) -> int:
            try:
                return int(self.groups[name].vars.get("ansible_group_priority", 1))
            except (TypeError, ValueError):
                return 1

        merged: dict[str, Any] = {}
        for name in sorted(self.groups_of(host), key=lambda n: (depth[n], priority(n), n)):
            merged.update(self.groups[name].vars)
        merged.update(self.host_vars.get(host, {}))
        merged.pop("ansible_group_priority", None)
        return merged


def expand_range(pattern: str) -> list[str]:
    """``db[01:03].example`` → db01, db02, db03 (zero padding kept; letters; a stride), Ansible's rule."""
    found = _RANGE.search(pattern)
    if found is None:
        return [pattern]
    head, tail = pattern[:found.start()], pattern[found.end():]
    start, end, step = found.group("start"), found.group("end"), int(found.group("step") or 1)
    if step < 1:
        raise InventoryError.worded("host range {pattern}: the stride must be at least 1", pattern=repr(pattern))
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if int(start) > int(end):
            raise InventoryError.worded("host range {pattern}: the start is after the end", pattern=repr(pattern))
        values = [str(n).zfill(width) for n in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        letters = string.ascii_letters
        if letters.index(start) > letters.index(end):
            raise InventoryError.worded("host range {pattern}: the start is after the end", pattern=repr(pattern))
        values = list(letters[letters.index(start):letters.index(end) + 1:step])
    else:
        raise InventoryError.worded("host range {pattern}: expected numbers or single letters", pattern=repr(pattern))
    return [name for value in values for name in expand_range(f"{head}{value}{tail}")]


def _host_and_port(pattern: str, error: Callable[[Phrase], InventoryError]) -> tuple[list[str], int | None]:
    """A host pattern's names and its ``:port``; a colon inside a range's brackets is the range's. ``error``: the
    error saying a problem where the pattern is written."""
    port = None
    head, colon, tail = pattern.rpartition(":")
    if colon and "]" not in tail and head.count("[") == head.count("]") and head.count(":") == 0:
        if not tail.isdigit() or not 1 <= int(tail) <= 65535:
            raise error(phrase("port {port} of host {host} is not a port number", port=repr(tail), host=repr(head)))
        pattern, port = head, int(tail)
    return expand_range(pattern), port


def _plain(value: Any) -> Any:
    """A Python literal as the JSON-like value Ansible makes of it: bytes as text, sets and tuples as lists,
    complex numbers and ``...`` as their text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, complex) or value is Ellipsis:
        return "..." if value is Ellipsis else str(value)
    return value


def _literal(text: str) -> Any:
    """An INI value: a Python literal where it is one (Ansible's rule), else the text as written."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # "invalid decimal literal" for host-01.internal
            return _plain(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _read_text(path: Path) -> str:
    """The file's text, read as every config file is (regular files only, bounded, UTF-8 checked)."""
    from ..errors import ConfigError
    from ._loader import read_config_text  # here: the loader imports this module

    try:
        return read_config_text(path)
    except ConfigError as exc:
        raise InventoryError.at(path, None, phrase("expected {expected}, found {found}",
                                                   expected=_as_phrase(exc.expected), found=exc.found)) from None


def _read_ini(path: Path, text: str) -> AnsibleInventory:
    inventory = AnsibleInventory(path)
    group, kind = "ungrouped", "hosts"
    defined: set[str] = {"all", "ungrouped"}  # groups with a [NAME] or [NAME:vars] section of their own
    named_as_child: dict[str, tuple[str, int]] = {}  # child -> (parent, line number), for Ansible's check
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        section = _SECTION.match(line)
        if section:
            group, kind = section.group("name"), section.group("kind") or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError.at(path, number, phrase("section [{group}:{kind}]: expected [NAME], [NAME:vars] "
                                                             "or [NAME:children]", group=group, kind=kind))
            inventory.group(group)
            defined.add(group)
            continue
        if line.startswith("["):
            raise InventoryError.at(path, number, phrase("{text} is not a section header", text=repr(line)))
        if kind == "vars":
            if "=" not in line:
                raise InventoryError.at(path, number, phrase("expected KEY=VALUE in [{group}:vars], found {text}",
                                                             group=group, text=repr(line)))
            key, value = (part.strip() for part in line.split("=", 1))
            inventory.group(group).vars[key] = _literal(value)
        elif kind == "children":
            child = line.split()[0]
            named_as_child.setdefault(child, (group, number))
            inventory.group(child)
            if child not in inventory.group(group).children:
                inventory.group(group).children.append(child)
        else:
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise InventoryError.at(path, number, message_phrase(exc)) from None
            if not words:
                continue
            variables: dict[str, Any] = {}
            for word in words[1:]:
                if "=" not in word:
                    raise InventoryError.at(path, number, phrase("expected KEY=VALUE after the host, found {word}",
                                                                 word=repr(word)))
                key, value = word.split("=", 1)
                variables[key] = _literal(value)
            hosts, port = _host_and_port(words[0], partial(InventoryError.at, path, number))
            if port is not None:
                variables.setdefault("ansible_port", port)
            for host in hosts:
                inventory.add_host(group, host, variables)
    for child, (parent, number) in named_as_child.items():
        if child not in defined:
            # Ansible's rule: a child group must have a section somewhere in the file (a typo otherwise).
            raise InventoryError.at(path, number, phrase("section [{parent}:children] includes undefined group {child}",
                                                         parent=parent, child=repr(child)))
    inventory.finish()
    return inventory


def _in_group(group: str, problem: Phrase) -> InventoryError:
    """A YAML inventory's problem in group ``group`` (``all > web``), where the file's line is unknown."""
    return InventoryError.worded("group {group}: {problem}", group=group, problem=problem)


def _read_yaml(path: Path, text: str) -> AnsibleInventory:
    import yaml  # only for a YAML inventory

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError.at(path, None, phrase("not YAML: {error}", error=message_phrase(exc))) from None
    inventory = AnsibleInventory(path)
    if data is None:
        inventory.finish()
        return inventory
    if not isinstance(data, dict):
        raise InventoryError.at(path, None, phrase("expected groups at the top (all:, or group names), found {type}",
                                                   type=type(data).__name__))

    def read_group(name: str, body: Any, where: str) -> None:
        group = inventory.group(str(name))
        if body is None:
            return
        if not isinstance(body, dict):
            raise InventoryError.at(path, None, phrase("group {group}: expected hosts:, vars: or children:, found "
                                                       "{type}", group=where, type=type(body).__name__))
        for key in body:
            if key not in ("hosts", "vars", "children"):
                raise InventoryError.at(path, None, phrase("group {group}: unknown key {key} (hosts, vars, children)",
                                                           group=where, key=repr(key)))
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise InventoryError.at(path, None, phrase("group {group}: hosts: expected a mapping of host names",
                                                       group=where))
        for pattern, variables in hosts.items():
            if variables is not None and not isinstance(variables, dict):
                raise InventoryError.at(path, None, phrase("host {host} in group {group}: expected variables, found "
                                                           "{type}", host=pattern, group=where,
                                                           type=type(variables).__name__))
            names, port = _host_and_port(str(pattern), partial(_in_group, where))
            merged = dict(variables or {})
            if port is not None:
                merged.setdefault("ansible_port", port)
            for host in names:
                inventory.add_host(str(name), host, merged)
        group_vars = body.get("vars") or {}
        if not isinstance(group_vars, dict):
            raise InventoryError.at(path, None, phrase("group {group}: vars: expected a mapping", group=where))
        group.vars.update(group_vars)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise InventoryError.at(path, None, phrase("group {group}: children: expected a mapping of group names",
                                                       group=where))
        for child, child_body in children.items():
            if str(child) not in group.children:
                group.children.append(str(child))
            read_group(str(child), child_body, f"{where} > {child}")

    for name, body in data.items():
        read_group(str(name), body, str(name))
    inventory.finish()
    return inventory


#: A ``key = value`` (or ``key: value``) line of drhost's INI, which no Ansible host line looks like.
_SETTING_LINE = re.compile(r"^\s*[A-Za-z0-9_.-]+\s*(=\s|\s=|:\s)")


def is_ansible_inventory(path: Path) -> bool:
    """Whether ``path`` is an Ansible inventory rather than drhost's INI or JSON: ``.yml``/``.yaml``, or a
    regular file with none of drhost's sections that has Ansible's marks (``[NAME:vars]``/``[NAME:children]``
    sections, or host lines, and no ``key = value`` line outside a ``:vars`` section). Anything else is left to
    drhost's own reader, which names what is wrong with it."""
    if path.suffix in (".yml", ".yaml"):
        return True
    if path.suffix == ".json" or not path.is_file():
        return False
    try:
        text = _read_text(path)
    except InventoryError:
        return False
    if DRHOST_SECTIONS.search(text) is not None or not text.strip():
        return False
    in_vars, hosts_seen = False, False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        section = _SECTION.match(line)
        if section:
            if section.group("kind") in ("vars", "children"):
                return True
            if section.group("kind") is not None:
                return False
            in_vars = False
            continue
        if _SETTING_LINE.match(line) and not in_vars:
            return False
        hosts_seen = True
    return hosts_seen


def read_inventory(path: Path) -> AnsibleInventory:
    text = _read_text(path)
    return _read_yaml(path, text) if path.suffix in (".yml", ".yaml") else _read_ini(path, text)


# -- host patterns (--limit) ---------------------------------------------------------------------------------
_SUBSCRIPT = re.compile(r"^(?P<name>.+)\[(?P<start>-?[0-9]+)(?::(?P<end>-?[0-9]*))?\]$")


def _split(pattern: str) -> list[str]:
    """Ansible's split of a pattern list: by commas if there are any, else by colons."""
    parts = pattern.split(",") if "," in pattern else re.split(r":(?![^\[]*\])", pattern)
    return [part.strip() for part in parts if part.strip()]


def _match_one(term: str, hosts: list[str], groups: Mapping[str, list[str]]) -> list[str]:
    subscript = _SUBSCRIPT.match(term)
    if subscript and not term.startswith("~"):
        chosen = _match_one(subscript.group("name"), hosts, groups)
        start = int(subscript.group("start"))
        end_text = subscript.group("end")
        if end_text is None:
            return chosen[start:start + 1] if start != -1 else chosen[-1:]
        end = int(end_text) + 1 if end_text else len(chosen)
        return chosen[start:end]
    if term in ("all", "*"):
        return list(hosts)
    if term.startswith("~"):
        regex = re.compile(term[1:])
        matched_groups = [name for name in groups if regex.match(name)]
        matched_hosts = [host for host in hosts if regex.match(host)]
    elif any(char in term for char in "*?["):
        matched_groups = [name for name in groups if fnmatch.fnmatchcase(name, term)]
        matched_hosts = [host for host in hosts if fnmatch.fnmatchcase(host, term)]
    else:
        matched_groups = [term] if term in groups else []
        matched_hosts = [term] if term in hosts and not matched_groups else []
    found: list[str] = []
    for name in matched_groups:
        found += [host for host in groups[name] if host not in found]
    found += [host for host in matched_hosts if host not in found]
    return found


def match_pattern(pattern: str, hosts: Iterable[str], groups: Mapping[str, list[str]]) -> list[str]:
    """The hosts an Ansible host pattern selects: groups, hosts, wildcards, ``~regex``, ``group[0]``/``[0:2]``,
    unions (``:`` or ``,``), intersections (``&``) and exclusions (``!``), evaluated in Ansible's order
    (unions, then intersections, then exclusions)."""
    every = list(hosts)
    terms = _split(pattern)
    if not terms:
        raise InventoryError.worded("--limit {pattern}: an empty pattern", pattern=repr(pattern))
    unions = [term for term in terms if not term.startswith(("&", "!"))]
    intersections = [term[1:] for term in terms if term.startswith("&")]
    exclusions = [term[1:] for term in terms if term.startswith("!")]
    chosen: list[str] = []
    for term in unions or ["all"]:
        chosen += [host for host in _match_one(term, every, groups) if host not in chosen]
    for term in intersections:
        keep = set(_match_one(term, every, groups))
        chosen = [host for host in chosen if host in keep]
    for term in exclusions:
        drop = set(_match_one(term, every, groups))
        chosen = [host for host in chosen if host not in drop]
    return chosen


# -- Ansible hosts as drhost targets -------------------------------------------------------------------------
_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0", ""}
_SSH_TRANSPORTS = {"ssh", "smart", "paramiko", "paramiko_ssh"}
#: Ansible variables whose value drhost takes, and the target key each gives.
CONNECTION_VARS = {"ansible_host": "host", "ansible_ssh_host": "host", "ansible_port": "port",
                   "ansible_ssh_port": "port", "ansible_user": "user", "ansible_ssh_user": "user",
                   "ansible_ssh_private_key_file": "key_file", "ansible_private_key_file": "key_file",
                   "ansible_become_user": "become_user"}
#: Secrets Ansible allows in an inventory (under a vault); drhost takes them from the environment or a file.
SECRET_VARS = {"ansible_password": "drhost_password_env", "ansible_ssh_pass": "drhost_password_env",
               "ansible_ssh_password": "drhost_password_env", "ansible_become_password": "drhost_become_password_env",
               "ansible_become_pass": "drhost_become_password_env", "ansible_sudo_pass": "drhost_become_password_env"}


def _flag(value: Any, host: str, variable: str) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InventoryError.worded("host {host}: {variable}: expected yes or no, found {value}", host=host,
                                variable=variable, value=repr(value))


def _ssh_args(text: str, host: str, variable: str) -> dict[str, str]:
    """ProxyJump and StrictHostKeyChecking given to ssh in ``ansible_ssh_common_args``/``_extra_args``."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InventoryError.worded("host {host}: {variable}: {problem}", host=host, variable=variable,
                                    problem=message_phrase(exc)) from None
    found: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        option: str | None = None
        if word == "-J" and index + 1 < len(words):
            found["proxy_jump"], index = words[index + 1], index + 2
            continue
        if word.startswith("-J") and len(word) > 2:
            found["proxy_jump"], index = word[2:], index + 1
            continue
        if word == "-o" and index + 1 < len(words):
            option, index = words[index + 1], index + 2
        elif word.startswith("-o") and len(word) > 2:
            option, index = word[2:], index + 1
        else:
            index += 1
        if option is None:
            continue
        key, _, value = option.replace(" ", "=", 1).partition("=")
        if key.lower() == "proxyjump":
            found["proxy_jump"] = value
        elif key.lower() == "stricthostkeychecking":
            found["host_key_policy"] = "strict" if value.lower() in ("yes", "ask") else "accept-new"
    return found


def host_target(inventory: AnsibleInventory, host: str) -> dict[str, tuple[Any, str]]:
    """The drhost target keys of Ansible host ``host``, each with the variable it came from."""
    variables = inventory.variables(host)
    # The messages name the host; the file is named by the error's origin.
    target: dict[str, tuple[Any, str]] = {}
    for name, key in SECRET_VARS.items():
        if name in variables:
            raise InventoryError.worded("host {host}: {variable} is inline; drhost takes secrets from an environment "
                                        "variable or a file only: use {key}", host=host, variable=name, key=key)
    connection = str(variables.get("ansible_connection", "ssh")).lower()
    if connection == "local":
        target["transport"] = ("local", "ansible_connection")
    elif connection in _SSH_TRANSPORTS:
        target["transport"] = ("ssh", "ansible_connection" if "ansible_connection" in variables else "(default)")
        target["host"] = (host, "(the inventory name)")
    else:
        raise InventoryError.worded("host {host}: ansible_connection {connection}: drhost reaches targets over ssh or "
                                    "local only", host=host, connection=repr(connection))
    for name, key in CONNECTION_VARS.items():
        if name in variables and (key != "host" or connection != "local"):
            target[key] = (variables[name], name)
    for name in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if name in variables:
            for key, value in _ssh_args(str(variables[name]), host, name).items():
                target[key] = (value, name)
    if "ansible_become" in variables and _flag(variables["ansible_become"], host, "ansible_become"):
        method = str(variables.get("ansible_become_method", "sudo")).lower()
        if method != "sudo":
            raise InventoryError.worded("host {host}: ansible_become_method {method}: drhost becomes with sudo only",
                                        host=host, method=repr(method))
        target["become"] = ("sudo", "ansible_become")
    elif "become_user" in target:
        del target["become_user"]  # without become there is nobody to become
    for name, value in variables.items():
        if name.startswith("drhost_") and len(name) > len("drhost_"):
            target[name[len("drhost_"):]] = (value, name)
    if "key_file" in target and isinstance(target["key_file"][0], str):
        target["key_file"] = (str(Path(target["key_file"][0]).expanduser()), target["key_file"][1])
    for value, name in target.values():
        if isinstance(value, str) and "{{" in value:
            raise InventoryError.worded("host {host}: {variable} = {value} is a Jinja2 template; drhost does not "
                                        "evaluate templates: give the value itself", host=host, variable=name,
                                        value=repr(value))
    return target
