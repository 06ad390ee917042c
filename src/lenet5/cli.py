"""Command-line conveniences around Hydra for train.py and eval.py (imports no torch: fast).

- `resume=<run directory>`: rerun that run's saved config in the same directory from its last
  checkpoint (rewritten into Hydra's own --config-path/--config-name form).
- After Hydra refuses an override of a key that does not exist, name the valid keys.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf


def resume_arguments(argv: list[str]) -> list[str]:
    """`resume=DIR [overrides]` -> the arguments that rerun DIR's saved config in DIR from its last checkpoint."""
    resume = [arg for arg in argv if arg.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        sys.exit(f"error: {run_dir} is not a run directory (no .hydra/config.yaml); give the directory "
                 f"train.py printed as 'run directory:'")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        sys.exit(f"error: {run_dir} has no checkpoints/last.ckpt to resume from (did it finish an epoch?); "
                 f"start it again instead")
    rest = [arg for arg in argv if not arg.startswith("resume=")]
    # The resumed invocation records its own Hydra files in .hydra/resumed, keeping the original's.
    return [f"--config-path={saved.parent}", "--config-name=config", f"hydra.run.dir={quoted(run_dir)}",
            "hydra.output_subdir=.hydra/resumed", f"ckpt_path={quoted(run_dir / 'checkpoints' / 'last.ckpt')}", *rest]


def quoted(path: Path) -> str:
    """A path as a quoted value of Hydra's override grammar: a sweep's run directories are named after
    their overrides (`0_optimizer=sdlm`), and an unquoted '=' or ',' there is a syntax error."""
    # Hydra reads a backslash as an escape only before a quote or the closing quote.
    escaped = re.sub(r"(\\*)'", r"\1\1\\'", str(path))
    return "'" + re.sub(r"(\\+)$", r"\1\1", escaped) + "'"


def explain_unknown_keys(argv: list[str], config_dir: Path, config_name: str) -> None:
    """Print the valid keys for each `key=value` override whose key is not in the composed config."""
    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a syntax error: Hydra has already said what it is
        explain_unquoted_paths(argv, parser)
        return
    groups = [o.input_line for o in overrides if _is_group(o.key_or_group, config_dir)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:  # noqa: BLE001 - a wrong group choice: Hydra has listed the options
        return
    for override in overrides:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.startswith("hydra") or _is_group(key, config_dir):
            continue
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig):
                valid = ", ".join(sorted(str(k) for k in node.keys()))
                where = f"'{parent}'" if parent else "the top level"
                print(f"error: there is no key '{leaf}' in {where}; valid keys there: {valid}. "
                      f"To add a new key, write +{key}=...", file=sys.stderr)


def explain_unquoted_paths(argv: list[str], parser: OverridesParser) -> None:
    """Hydra's 'mismatched input' for a path that holds '=' or ',' (a sweep job's directory) says
    nothing of quoting: say it, with the override written the way that works."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if arg.startswith("-") or not value or not any(c in value for c in "=, "):
            continue
        try:
            parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - this is the override Hydra could not read
            print(f"error: the value of {key} holds '=', ',' or a space, which Hydra reads as syntax; quote it: "
                  f"'{key}=\"{value}\"'", file=sys.stderr)


def _is_group(key: str, config_dir: Path) -> bool:
    return (config_dir / key).is_dir()
