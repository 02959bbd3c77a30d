"""How a test run is spread over the machine's cores (pytest-xdist); the hooks are in conftest.py.

The policy (README, "Running the tests"):

- The whole suite (``pytest`` with no paths, or with a directory) runs on every core: ``-n auto``
  (xdist counts the cores; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides the count).
- Named files or tests (``pytest tests/test_poll.py``) run in this one process: no workers to
  start, no second Dovecot, output as without xdist.
- ``-n N`` on the command line always wins; ``-n 0`` or ``-p no:xdist`` runs serially. Without
  pytest-xdist installed everything runs serially, as before.

How the tests are shared out (``SuiteScheduling``): each test file goes whole to one worker, so a
module's fixtures (a Dovecot of its own, a 50 MB mailbox, moto's S3 server) are set up once. Tests
marked ``@pytest.mark.xdist_group("NAME")`` go to one worker together whatever their file: the
group ``HEAVY`` holds the tests that load the machine for minutes and assert a proportion of
something timed (the SIGKILL loops), so two of them never run at the same time; the groups are
handed out first, so the longest work does not start last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The xdist_group of the tests that must not run beside each other (see the module docstring).
HEAVY = "heavy"


def configure(config: pytest.Config) -> None:
    """Choose ``-n`` and ``--dist`` for this run before xdist reads them (the policy above)."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    option = config.option
    if option.numprocesses is None and _whole_suite_or_directory(config):
        option.numprocesses = "auto"
    if option.numprocesses and option.dist == "no":
        option.dist = "loadgroup"  # not xdist's "load" (one test at a time): see SuiteScheduling


def configure_worker(config: pytest.Config) -> None:
    """In a worker: send the groups' tests with their group's name, as the controller expects.
    A worker parses the original command line again (without the ``--dist`` chosen above), so
    the controller tells it (``pytest_configure_node``)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("mail2ticket_dist") == "loadgroup":
        config.option.loadgroup = True


def _whole_suite_or_directory(config: pytest.Config) -> bool:
    option = config.option
    if option.collectonly or option.usepdb or option.trace:
        return False
    # With no paths, config.args are the testpaths (the tests/ directory). A directory means
    # "everything in it"; a file or a test id means "just this".
    for arg in config.args:
        path = Path(arg.split("::", 1)[0])
        if (config.invocation_params.dir / path).is_dir():
            return True
    return False


def make_scheduler(config: pytest.Config, log):
    """The scheduler of ``--dist loadgroup`` runs: whole files, and the groups first (None for
    the other ``--dist`` modes: xdist's own)."""
    if config.option.dist != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # xdist is optional: only when it runs

    class SuiteScheduling(LoadGroupScheduling):
        """``loadgroup`` in which a test without a group is sent with the rest of its file
        (xdist's own sends it alone), and the groups are handed out before the files."""

        def _split_scope(self, nodeid: str) -> str:
            group = super()._split_scope(nodeid)
            return f"@{group}" if group != nodeid else nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node) -> None:
            for scope in [s for s in self.workqueue if s.startswith("@")][::-1]:
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return SuiteScheduling(config, log)
