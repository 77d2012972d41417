"""What the training jobs, the endpoints and the SageMaker API get from the server: a narrow runtime, not the
whole ``LocalCloud`` (no module depends back on the server)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auth import AccessKey
from .images import ImageMap
from .state import State


@dataclass
class Settings:
    stop_grace: float = 30.0  # seconds between SIGTERM and SIGKILL when a job or model server stops
    health_timeout: float = 600.0  # default ContainerStartupHealthCheckTimeoutInSeconds
    invoke_timeout: float = 60.0  # SageMaker's InvokeEndpoint limit
    max_instances: int = 4  # model server processes per variant at most (one per instance)
    poll_interval: float = 0.5
    snapshot_interval: float = 10.0  # seconds between S3/Logs snapshots while something changed
    access_key: AccessKey = field(default_factory=AccessKey)  # the only credentials requests may be signed with
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call localcloud (none by default)


@dataclass
class Runtime:
    state: State
    settings: Settings
    images: ImageMap
    data_dir: Path
    python: str
    shutting_down: threading.Event
    clients: Callable[[str], Any]  # an AWS client of localcloud's own, signed with its key
    persist: Callable[[], None]  # snapshot S3 and CloudWatch Logs now

    def client(self, service: str):
        return self.clients(service)
