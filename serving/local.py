"""Run `kubevae serve` as a local subprocess on free loopback ports and wait until it is ready.

    with LocalServer(model_dir, grpc=True) as server:
        Client(server.url, server.model_name).encode(images)
        GrpcClient(server.grpc_target)

For tests, benchmarks and the pipeline's local deploy step (start, smoke-test, stop).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the process that started it dies, killed or not, so
    that no server outlives an interrupted test or benchmark."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalServer:
    def __init__(self, model_dir: str | Path, *, model_name: str = "kubevae", grpc: bool = True,
                 args: list[str] | None = None, log_path: str | Path | None = None,
                 startup_timeout: float = 120.0, env: dict[str, str] | None = None):
        self.model_dir, self.model_name = Path(model_dir), model_name
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.args, self.log_path, self.startup_timeout = list(args or []), log_path, startup_timeout
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self._log: IO[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "kubevae", "serve", "--model", str(self.model_dir),
               "--model-name", self.model_name, "--http-port", str(self.http_port)]
        if self.grpc_port is not None:
            cmd += ["--grpc-port", str(self.grpc_port)]
        return cmd + self.args

    def start(self) -> LocalServer:
        self._log = open(self.log_path, "ab") if self.log_path else None
        output = self._log if self._log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=output, stderr=output, env=self.env,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.url}/v2/models/{self.model_name}/ready"
        process = self.process
        if process is None:
            raise RuntimeError("LocalServer.wait_ready: the server was not started (call start())")
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kubevae serve exited with code {process.returncode} before "
                                   f"it was ready (log: {self.log_path or 'not kept'})")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"kubevae serve was not ready within {self.startup_timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
