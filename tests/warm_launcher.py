"""Run an entry script (train.py, eval.py, ..., ``-m wgpt.<tool>``) in a new process that starts
with torch, Lightning, Hydra and wgpt already imported: forked from a "zygote", one per test
process, that imported them once. A new interpreter spends ~7 s of a core importing them
(lightning.pytorch alone ~6 s: torch, torch._dynamo, torchmetrics and the transformers it loads),
several times what a test run then trains. The run is still a process of its own, as from a
shell: its own pid, command line, environment, working directory, sys.path, stdin, stdout,
stderr, session if asked, signal handlers and exit status; its non-daemon threads are joined and
its atexit functions run as an interpreter's exit does.

What the zygote imported it does not import again, so an environment variable a preloaded module
reads at import (Hugging Face's HF_*, TRANSFORMERS_*; OMP_NUM_THREADS, read when torch loads) must
be the zygote's, or the run goes to a new interpreter (``usable``). So does anything that is not
an entry script (``python -c ...``), and every run on a machine without fork.

Started as a script, this file is the zygote: it imports, says "ready", then reads one request a
line on stdin (JSON: argv, cwd, env, stdin, out, err, status, new_session), forks, answers the
child's pid, and when a child ends writes its exit status (as ``Popen.returncode`` gives it) to
the request's status file.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the entry scripts import (the heavy part: Lightning and what it loads).
PRELOAD = [
    "torch",
    "lightning.pytorch",
    "hydra",
    "wgpt.core.launch",
    "wgpt.core.train",
    "wgpt.core.report",
    "wgpt.core.sweep_resume",
    "wgpt.core.validate",
    "wgpt.tools.evaluate",
    "wgpt.tools.generate",
    "wgpt.interop.export",
    "wgpt.data.prepare",
]
# Read at import by a preloaded module: a run that sets one of these another way needs a new interpreter.
READ_AT_IMPORT = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "CUDA_", "PYTORCH_", "WANDB_")
# ... except these: read by `datasets` alone, which the zygote does not import (it checks).
NOT_PRELOADED = ("HF_DATASETS_",)


def zygote_main() -> None:
    import importlib
    import threading

    for name in PRELOAD:
        importlib.import_module(name)
    if "datasets" in sys.modules:
        os.write(1, b"not ready: the zygote imported datasets, which reads HF_DATASETS_* at import\n")
        return
    if threading.active_count() != 1:
        # a child forked while another thread holds a lock could wait for it forever. (The idle
        # thread pool numpy's OpenBLAS starts at import is fork-safe; torch's OpenMP pool, which
        # is not, starts at the first parallel operation, which the zygote never runs.)
        os.write(1, b"not ready: the zygote has threads after its imports\n")
        return
    # A fresh interpreter's sys.path without this file's folder (sys.path[0]) and the PYTHONPATH entries.
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = sys.path[1 + len(pythonpath) :]
    os.write(1, b"ready\n")

    statuses: dict[int, str] = {}  # child pid -> its status file
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the test process is gone
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    run_child(request, base_path)  # never returns
                statuses[pid] = request["status"]
                os.write(1, f"{pid}\n".encode())
        while statuses:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            path = statuses.pop(pid, None)
            if path is not None:
                Path(path + ".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
                os.rename(path + ".tmp", path)


def run_child(request: dict, base_path: list[str]) -> None:
    """In the forked child: become the requested process, run it, exit with its status."""
    import atexit
    import runpy
    import threading
    import traceback

    code = 1
    try:
        if request["new_session"]:
            os.setsid()
        streams = [
            (0, request["stdin"], os.O_RDONLY),
            (1, request["out"], os.O_WRONLY),
            (2, request["err"], os.O_WRONLY),
        ]
        for fd, path, flags in streams:
            opened = os.open(path, flags)
            os.dup2(opened, fd)  # sys.stdin/stdout/stderr wrap fds 0-2; unbuffered (PYTHONUNBUFFERED)
            os.close(opened)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        pythonpath = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        if argv[0] == "-m":
            module, args = argv[1], argv[2:]
            sys.path[:] = [request["cwd"], *pythonpath, *base_path]
            sys.argv = [module, *args]  # runpy puts the module's file first
            run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
        else:
            script = os.path.join(request["cwd"], argv[0])
            sys.path[:] = [os.path.dirname(os.path.abspath(script)), *pythonpath, *base_path]
            sys.argv = [argv[0], *argv[1:]]
            run = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
        try:
            run()
            code = 0
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except KeyboardInterrupt:  # as the interpreter does: the traceback, then death by SIGINT
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            threading._shutdown()  # as an interpreter's exit: join the non-daemon threads, run atexit
        finally:
            atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


class WarmLauncher:
    """The test process's side: start the zygote once, then ``run`` as ``subprocess.run`` would."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.zygote = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=self.env,
        )
        self.ready: bool | None = None  # known once the zygote has imported

    def usable(self, args: tuple[str, ...], env: dict) -> bool:
        if self.ready is None:
            line = b"-"
            while line and not line.startswith((b"ready", b"not ready")):  # past anything an import printed
                line = self.zygote.stdout.readline()
            self.ready = line.startswith(b"ready")
        if not self.ready or self.zygote.poll() is not None or not args or args[0] == "-c":
            return False
        changed = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)}
        return not any(k.startswith(READ_AT_IMPORT) and not k.startswith(NOT_PRELOADED) for k in changed)

    def run(
        self, args: tuple[str, ...], cwd: Path, env: dict, timeout: float, input: str = "", new_session: bool = False
    ) -> subprocess.CompletedProcess:
        """As ``subprocess.run(capture_output=True, text=True)``; ``new_session``: its own session and
        process group, as ``start_new_session=True`` gives."""
        with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
            stdin, out, err, status = (os.path.join(tmp, name) for name in ("in", "out", "err", "status"))
            Path(stdin).write_text(input)
            for path in (out, err):
                Path(path).touch()
            request = dict(
                argv=list(args),
                cwd=str(cwd),
                env=env,
                stdin=stdin,
                out=out,
                err=err,
                status=status,
                new_session=new_session,
            )
            self.zygote.stdin.write(json.dumps(request).encode() + b"\n")
            self.zygote.stdin.flush()
            pid = int(self.zygote.stdout.readline())
            deadline = time.monotonic() + timeout
            while not os.path.exists(status):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired([sys.executable, *args], timeout, Path(out).read_text())
                time.sleep(0.02)
            returncode = int(Path(status).read_text())
            # text as subprocess.run(text=True) gives it: universal newlines
            return subprocess.CompletedProcess(
                [sys.executable, *args], returncode, Path(out).read_text(), Path(err).read_text()
            )

    def close(self) -> None:
        if self.zygote.poll() is None:
            self.zygote.stdin.close()
            self.zygote.wait(timeout=30)


if __name__ == "__main__":
    zygote_main()
