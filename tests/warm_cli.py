"""A warm ``deconvnet`` command for the docs' shell examples.

Every ``deconvnet ...`` line of a page would otherwise start an interpreter and import torch,
torchvision and the package again: seconds each, most of a CLI example's time. Here one server
process imports them once; each command is a fork of it that takes the caller's working
folder, environment (``PYTHONPATH`` included), arguments and its stdin, stdout and stderr (the
file descriptors themselves, passed over a Unix socket), runs ``deconvnet.cli.main`` as the
console script does, and exits with its status. The ``deconvnet`` on the examples' ``PATH`` is a
small client that hands its command over and exits with that status.

The console script itself is still run for real: ``test_cli.test_errors_exit_nonzero_without_traceback``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SERVER = textwrap.dedent('''
    import json, os, socket, sys, traceback

    import deconvnet.cli  # torch, torchvision and the package: imported once here, not per command

    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX)
    server.bind(sys.argv[1])
    server.listen()
    server.settimeout(5)
    print("ready", flush=True)
    while True:
        try:
            connection, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test process is gone: so is its server
                sys.exit(0)
            continue
        connection.settimeout(None)
        message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:  # the command: the caller's streams, folder, environment and arguments
            server.close()
            connection.close()
            for fd, standard in zip(fds, (0, 1, 2)):
                os.dup2(fd, standard)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            paths = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
            sys.path[:0] = paths
            sys.argv = ["deconvnet", *request["argv"]]
            status = 1
            try:
                status = deconvnet.cli.main(request["argv"])
            except SystemExit as exit:  # argparse's refusals and --help
                status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        for fd in fds:
            os.close(fd)
        _, wait_status = os.waitpid(pid, 0)
        connection.sendall(str(os.waitstatus_to_exitcode(wait_status)).encode())
        connection.close()
''')

CLIENT = textwrap.dedent('''
    import json, os, socket, sys

    client = socket.socket(socket.AF_UNIX)
    client.connect({socket!r})
    request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
    socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
    client.shutdown(socket.SHUT_WR)
    sys.exit(int(client.recv(16) or b"1"))
''')


class WarmCommand:
    """The server, and a folder holding the ``deconvnet`` client to put first on ``PATH``."""

    def __init__(self, folder: Path) -> None:
        socket_path = str(folder / "deconvnet.sock")
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, socket_path], stdout=subprocess.PIPE,
                                       text=True)
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"
        self.bin = folder / "bin"
        self.bin.mkdir()
        client = self.bin / "deconvnet"
        client.write_text(f"#!{sys.executable} -S\n" + CLIENT.format(socket=socket_path))
        client.chmod(0o755)

    def close(self) -> None:
        self.server.kill()
        self.server.wait()
        if self.server.stdout is not None:
            self.server.stdout.close()


def warm_path(warm: WarmCommand) -> str:
    """``PATH`` for the examples: the client, then the interpreter's own folder, then the rest."""
    return os.pathsep.join([str(warm.bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
