"""A benchmark's own installation on the real engine: the built base image registered, an
engineer "bench" with the demo dataset, and the policy opened as wide as the benchmark asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import select

from audit.events import Actor
from console.core import Caller, Sealroom
from console.models import User
from console.services import accounts, datasets, images
from console.settings import Settings
from sandbox.images import find_image
from tests.helpers import OPERATOR, PASSWORD, change_policy, write_dataset

#: Disclosure budgets far above anything a benchmark prints, so no budget ends a run.
WIDE_DISCLOSURE = {"disclosure": {"per_sandbox_bytes": 1 << 40, "per_user_daily_bytes": 1 << 40}}


def bench_home(home: Path, policy: dict[str, Any], *, rows: int = 200
               ) -> tuple[Sealroom, Caller]:
    """A fresh installation under `home` (a demo dataset of `rows` rows) and the caller for
    its engineer "bench"."""
    image = find_image("base")
    if image is None:
        raise RuntimeError("the sandbox image is not built; run 'sealroom images build'")
    core = Sealroom(Settings.from_env(home=home / "home",
                                      audit_checkpoint_dir=home / "home" / "checkpoints"))
    images.register_image(core, OPERATOR, "base", image.tag, image.digest)
    accounts.create_user(core, OPERATOR, "bench", "engineer", PASSWORD)
    datasets.register_dataset(core, OPERATOR, write_dataset(home / "src", rows), "demo", ["bench"])
    change_policy(core, {**WIDE_DISCLOSURE, **policy})
    with core.read() as session:
        user = session.exec(select(User).where(User.name == "bench")).one()
    return core, Caller(Actor("bench", "engineer", "password", "bench"), user_id=user.id)
