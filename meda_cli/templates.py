"""A run's template built after the CLI has answered: a detached ``meda`` process.

The CLI acting on this host exits once its VM has started, so the build it leaves runs
in a process of its own session (a hidden ``meda images build-template``), logging to
``MEDA_HOME/templates/<template>.log``; the job it reads is written beside it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

from meda_core.errors import InvalidRequest
from meda_core.host import processes as procs
from meda_core.vms.templates import TEMPLATE_PREFIX, TemplateJob

log = logging.getLogger(__name__)


def job_file(home: Path, name: str) -> Path:
    if not re.fullmatch(re.escape(TEMPLATE_PREFIX) + "[0-9a-f]{16}", name):
        raise InvalidRequest(f"{name!r} is not the name of a run's template", name=name)
    return home / "templates" / f"{name}.job.json"


def log_file(home: Path, name: str) -> Path:
    return home / "templates" / f"{name}.log"


def spawn_build(home: Path, job: TemplateJob) -> None:
    """Start building ``job`` in a detached process; this one does not wait for it."""
    path = job_file(home, job.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    staged.write_text(job.model_dump_json())  # may hold user data: MEDA_HOME is private
    staged.chmod(0o600)
    staged.replace(path)
    argv = procs.python("-m", "meda_cli.main", "images", "build-template", job.name)
    try:
        with log_file(home, job.name).open("ab") as out:
            # From "/": it holds no directory of the caller's busy (and MEDA_HOME stays put).
            environment = {**os.environ, "MEDA_HOME": str(home.absolute())}
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                env=environment,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as error:  # the run succeeded; a later one tries again
        log.warning("could not start building template %s: %s", job.name, error)


def read_job(home: Path, name: str) -> TemplateJob:
    return TemplateJob.model_validate_json(job_file(home, name).read_text())
