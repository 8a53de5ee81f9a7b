"""Run fastnas in a subprocess under a memory limit and a time limit, as the bounded-input tests
and the fuzz test do: ``RLIMIT_DATA`` (heap and private mappings; ``RLIMIT_AS`` would refuse the
shared libraries torch maps) and ``RLIMIT_CPU`` (CPU seconds: a run that would take minutes is
killed by SIGXCPU; CPU time, not wall time, so a loaded CI machine does not fail the test; a
generous wall-clock timeout still stops a hang)."""
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY = 2 << 30   # 2 GiB
SECONDS = 30       # CPU seconds
WALL = 300         # wall-clock seconds, for a process that hangs without using the CPU


@dataclass
class Done:
    status: int
    stdout: str
    stderr: str

    @property
    def lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def _limits(memory: int, seconds: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
    return apply


def run_python(args, cwd=None, timeout: float = SECONDS, memory: int = MEMORY,
               env=None) -> Done:
    """``python args...`` with fastnas from this checkout, limited to ``timeout`` CPU seconds
    (killed past it: a negative status) and ``memory`` bytes."""
    env = dict(os.environ if env is None else env, FASTNAS_DEBUG="0", PYTHONWARNINGS="default",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None), env.pop("RANK", None)
    done = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=env, timeout=WALL,
                          capture_output=True, text=True,
                          preexec_fn=_limits(memory, int(timeout)))
    return Done(done.returncode, done.stdout, done.stderr)


def run_fastnas(argv, cwd=None, timeout: float = SECONDS, memory: int = MEMORY) -> Done:
    """``python -m fastnas argv...``, limited (see ``run_python``)."""
    return run_python(["-m", "fastnas", *argv], cwd, timeout, memory)


def assert_one_line(done: Done, status: int, *fragments: str) -> str:
    """The run ended with ``status`` and printed one ``fastnas: error:`` line on stderr holding
    every fragment; returns the line."""
    assert done.status == status, (done.status, done.stderr[-2000:])
    assert len(done.lines) == 1, done.stderr[-2000:]
    line = done.lines[0]
    assert line.startswith("fastnas: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
