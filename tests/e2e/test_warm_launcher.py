"""tests/warm_launcher.py: a script forked from the warm zygote behaves as the same script started
by a new interpreter (what run_cli(fresh=True) does): the same output, exit status, environment,
paths and exit-time work, for each way a script can end."""

import json
import signal
import textwrap

import pytest

from conftest import run_cli

SCRIPT = """
import atexit, json, os, signal, sys, threading, time

report = {
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "path0": sys.path[0],
    "on_path": os.environ.get("EXTRA_DIR", "") in sys.path,
    "env": os.environ.get("WARM_TEST_VALUE"),
    "stdin": sys.stdin.read(),
    "tty": sys.stdout.isatty(),
    "own_group": os.getpgrp() == os.getpid(),
    "main": __name__,
}
print(json.dumps(report))
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("atexit ran"))
ending = sys.argv[1]
if ending == "thread":  # a non-daemon thread outlives the script: the interpreter waits for it
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
elif ending == "exit-3":
    sys.exit(3)
elif ending == "exit-message":
    sys.exit("stopped: a message")
elif ending == "raise":
    raise ValueError("uncaught")
elif ending == "ctrl-c":
    raise KeyboardInterrupt
elif ending == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("ending", ["thread", "exit-3", "exit-message", "raise", "ctrl-c", "kill"])
def test_a_warm_run_is_a_fresh_run(tmp_path, ending):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    extra = tmp_path / "extra"
    extra.mkdir()
    env = {"WARM_TEST_VALUE": "42", "EXTRA_DIR": str(extra), "PYTHONPATH": str(extra)}
    runs = [
        run_cli(str(script), ending, cwd=tmp_path, env=env, input="typed in", new_session=True, fresh=fresh)
        for fresh in (True, False)
    ]
    fresh, warm = runs
    for run in runs:
        report = json.loads(run.stdout.splitlines()[0])
        assert report == {
            "argv": [str(script), ending],
            "cwd": str(tmp_path),
            "path0": str(tmp_path),
            "on_path": True,
            "env": "42",
            "stdin": "typed in",
            "tty": False,
            "own_group": True,
            "main": "__main__",
        }
    assert (
        warm.returncode
        == fresh.returncode
        == {
            "thread": 0,
            "exit-3": 3,
            "exit-message": 1,
            "raise": 1,
            "ctrl-c": -signal.SIGINT,
            "kill": -signal.SIGKILL,
        }[ending]
    )
    assert warm.stdout == fresh.stdout
    assert warm.stdout.endswith({"thread": "thread done\natexit ran\n", "kill": "}\n"}.get(ending, "atexit ran\n"))
    # Tracebacks name the same lines (the frames above the script's differ: runpy's, not the interpreter's).
    assert last_lines(warm.stderr) == last_lines(fresh.stderr)


def last_lines(stderr: str) -> list[str]:
    return textwrap.dedent(stderr).strip().splitlines()[-2:]
