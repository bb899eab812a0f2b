"""Independent network steps run at once, in threads: most of their time is spent
waiting on a subprocess or the kernel."""

from __future__ import annotations

import threading
from collections.abc import Callable


def together(*steps: Callable[[], object]) -> None:
    """Run ``steps`` concurrently and wait for all of them; then raise the first error
    (in the order given), so a failure is never hidden by a step still running."""
    errors: list[BaseException | None] = [None] * len(steps)

    def run(index: int) -> None:
        try:
            steps[index]()
        except BaseException as exc:  # handed to the caller's thread below
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, len(steps))]
    for thread in threads:
        thread.start()
    run(0)  # the first in this thread: one thread fewer
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
