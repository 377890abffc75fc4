"""The demo's recipes and configuration files (:mod:`avssl.demo`).

Which recipes ``make demo RECIPE=...`` accepts, which recipe continues another recipe's run
(:data:`CONTINUES`), the config files the demo adds after a recipe (``recipes/demo.yaml`` and
``recipes/demo/<recipe>.yaml``), and the demo's whole pretraining config merged into one dict
for the analysis scripts in ``bench/``.
"""

from __future__ import annotations

from pathlib import Path

# recipes that start from another recipe's run: recipe -> (that recipe, the model setting that
# names its checkpoint); make demo runs the two in turn
CONTINUES = {"avid_cma": ("avid", "avid_ckpt"), "mavil_stage2": ("mavil", "teacher_ckpt")}


def demo_recipes() -> list[str]:
    """Recipes ``make demo RECIPE=...`` accepts: every recipe whose ``*_ckpt`` settings (another
    run's checkpoint) are set, or are the one :data:`CONTINUES` fills in (``mavil_stage2``'s
    teacher, ``avid_cma``'s Cross-AVID run)."""
    import yaml

    from avssl.train import NOT_RECIPES

    usable = []
    for path in Path("recipes").glob("*.yaml"):
        if path.stem in NOT_RECIPES:
            continue
        init = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("init_args") or {}
        unset = {k for k, v in init.items() if k.endswith("_ckpt") and not v}
        if unset <= {CONTINUES.get(path.stem, ("", ""))[1]}:
            usable.append(path.stem)
    return sorted(usable)


def overlays(recipe: str) -> list[str]:
    """Config files added after ``recipes/<recipe>.yaml``: the common demo budget, then the
    recipe's own demo settings where it has some."""
    own = Path("recipes/demo") / f"{recipe}.yaml"
    return ["recipes/demo.yaml"] + ([str(own)] if own.is_file() else [])


def _merge(into: dict, new: dict) -> dict:
    for k, v in new.items():
        into[k] = _merge(dict(into.get(k) or {}), v) if isinstance(v, dict) else v
    return into


def demo_config(recipe: str, extra: list[str] | None = None) -> dict:
    """The demo's pretraining config as one dict: ``recipes/_base.yaml`` + the recipe + the
    demo overlays (+ ``extra`` files), merged key by key as LightningCLI does (for the
    analysis scripts in ``bench/`` that rebuild the demo's model and loader)."""
    import yaml

    cfg: dict = {}
    paths = ["recipes/_base.yaml", f"recipes/{recipe}.yaml", *overlays(recipe), *(extra or [])]
    for path in paths:
        _merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return cfg
