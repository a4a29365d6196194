"""The chunklm logger: levels, stdout for info and stderr for warnings, and one printing process on multi-host runs."""

import pytest

from chunklm import logs


@pytest.fixture(autouse=True)
def _restore():
  yield
  logs.set_verbosity("normal")
  logs.set_process(0, 1)


def test_levels_and_streams(capsys):
  logs.info("plain")
  logs.debug("hidden")
  logs.warning("careful")
  out, err = capsys.readouterr()
  assert out == "plain\n" and err == "warning: careful\n"
  logs.set_verbosity("verbose")
  logs.debug("shown")
  logs.set_verbosity("quiet")
  logs.info("hidden")
  logs.warning("still shown")
  out, err = capsys.readouterr()
  assert out == "shown\n" and err == "warning: still shown\n"


def test_only_process_0_prints_info_on_a_multi_host_run(capsys):
  logs.set_process(1, 4)
  logs.info("data: ...")
  logs.LOGGER.info("process 1 of 4", extra=logs.ALL_PROCESSES)
  logs.warning("disk almost full")
  out, err = capsys.readouterr()
  assert out == "[p1/4] process 1 of 4\n" and err == "[p1/4] warning: disk almost full\n"
  logs.set_verbosity("verbose")  # every process, tagged
  logs.info("data: ...")
  assert capsys.readouterr().out == "[p1/4] data: ...\n"
  logs.set_process(0, 4)
  logs.set_verbosity("normal")
  logs.info("data: ...")
  assert capsys.readouterr().out == "[p0/4] data: ...\n"
