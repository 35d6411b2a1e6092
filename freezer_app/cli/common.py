"""What the commands share: exit codes, messages on stderr, model and freeze-plan options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freezer_app.core.errors import FreezerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def err(message: str) -> None:
    print(message, file=sys.stderr)


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def count_int(text: str) -> int:
    """A number of things to list: 0 or more."""
    return _whole_number(text, 0)


def _project_setting(key: str) -> Any:
    from freezer_app.core import settings
    from freezer_app.core.project import Project

    return settings.find(Project, key)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--num-classes, and --pretrained or --weights (their help from the project schema)."""
    from freezer_app.core import settings

    p.add_argument(
        "--num-classes", type=positive_int, metavar="N", help="size of the classifier head"
    )
    w = p.add_mutually_exclusive_group()
    settings.add_flag(
        w, _project_setting("pretrained"), dest="pretrained", default=False, action="store_true"
    )
    settings.add_flag(w, _project_setting("weights"), dest="weights", default=None)


def add_trust_option(p: argparse.ArgumentParser) -> None:
    """--trust-code: run a model's Python file even when a file (not the command line) names it."""
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="run a model's own Python file (FILE.py:CALLABLE) also when a file names it: a "
        "project, run folder, bundle config.json or weights metadata. Without it only a .py "
        "you name on the command line runs. Use it only for files you trust",
    )


def code_trust(args: argparse.Namespace, source: str | Path | None = None) -> Any:
    """The trust for a model string given on the command line, or read from the file `source`."""
    from freezer_app.core.trust import CodeTrust

    trust_code = bool(getattr(args, "trust_code", False))
    if source is not None:
        return CodeTrust.from_file(source, trust_code)
    return CodeTrust(trust_code=trust_code)


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """--plan FILE, --preset, --freeze, --unfreeze and --bn-policy."""
    from freezer_app.core import settings

    p.add_argument("--plan", metavar="FILE", help="read the freeze plan from a JSON file")
    settings.add_flag(p, _project_setting("plan.preset"))
    for key, flag in (("plan.freeze", "--freeze"), ("plan.unfreeze", "--unfreeze")):
        p.add_argument(
            flag,
            action="append",
            default=[],
            metavar="SEL",
            help=f"{_project_setting(key).spec.help} (repeatable)",
        )
    settings.add_flag(p, _project_setting("plan.bn_policy"))


def plan_flags_given(args: argparse.Namespace) -> list[str]:
    present = vars(args)
    flags = [f for f, key in (("--plan", "plan"),) if present.get(key)]
    flags += [f for f in ("--freeze", "--unfreeze") if present.get(f[2:])]
    flags += [
        f
        for f, key in (("--preset", "plan.preset"), ("--bn-policy", "plan.bn_policy"))
        if key in present
    ]
    if present.get("unfreeze_schedule"):
        flags.append("--unfreeze-schedule")
    return flags


def plan_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    from freezer_app.core.freeze import FreezePlan

    plan = base or FreezePlan()
    present = vars(args)
    if present.get("plan"):
        try:
            plan = FreezePlan.from_json(Path(args.plan).read_text())
        except OSError as e:
            raise FreezerError(
                f"Cannot read freeze plan {args.plan}: {e.strerror}.",
                "Pass a JSON file written by Freezer.",
            ) from None
    if "plan.preset" in present:
        plan.preset = present["plan.preset"]
    plan.freeze += present.get("freeze", [])
    plan.unfreeze += present.get("unfreeze", [])
    if "plan.bn_policy" in present:
        plan.bn_policy = present["plan.bn_policy"]
    return plan


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
