"""The local transport (LocalSession): its errors name the path or command, in English and in the operator's
language."""

from __future__ import annotations

from pathlib import Path

import pytest

from drhost.i18n import translator
from drhost.transport import CommandStopped, LocalSession, TransportError


def test_a_missing_file_is_said_in_chinese_naming_the_path_and_the_english_is_unchanged(tmp_path: Path) -> None:
    """read_text of a missing file: the English names the path and the OS's reason; zh_CN says it in Chinese with
    the same path and reason."""
    missing = tmp_path / "etc" / "drproduct.ini"
    with pytest.raises(TransportError) as caught:
        LocalSession("t").read_text(str(missing))
    assert caught.value.category == "file"
    assert str(caught.value) == f"cannot read {missing}: No such file or directory"
    assert caught.value.in_language(translator("zh_CN")) == f"无法读取 {missing}: No such file or directory"


def test_removing_a_directory_without_recursive_is_said_in_chinese(tmp_path: Path) -> None:
    """remove() of a directory without recursive=True refuses, naming the directory, in English and in Chinese."""
    with pytest.raises(TransportError) as caught:
        LocalSession("t").remove(str(tmp_path))
    assert str(caught.value) == f"{tmp_path} is a directory; pass recursive=True"
    assert caught.value.in_language(translator("zh_CN")) == f"{tmp_path} 是一个目录; 请传入 recursive=True"


def test_a_command_past_its_timeout_is_stopped_and_said_in_chinese() -> None:
    """A command past its timeout raises CommandStopped (timed out) naming the command and the seconds, the
    English as before and the Chinese with the same command."""
    with pytest.raises(CommandStopped) as caught:
        LocalSession("t", kill_grace_s=0.2).run(["sleep", "30"], timeout=0.2)
    assert caught.value.timed_out and caught.value.category == "plugin"
    assert str(caught.value) == "sleep stopped after 0 s"
    assert caught.value.in_language(translator("zh_CN")) == "sleep 在 0秒后被停止"
