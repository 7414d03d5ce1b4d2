"""One layer of defaults: what config.py assumes for a key left out of params.yaml is what the shipped params.yaml
says, and every setting is in params.yaml (nothing hidden in code); a model's lineage hash covers what decides the
model only."""

from __future__ import annotations

from pathlib import Path

import yaml

from recops.config import MODEL_SECTIONS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
# the data section describes the embedded dataset (its columns and attribute tables), not a default of recops
DATASET = ("data.columns", "data.item_attributes", "data.user_attributes")


def differences(shipped, defaults, path=""):
    if isinstance(shipped, dict) and isinstance(defaults, dict):
        for key in sorted(set(shipped) | set(defaults)):
            name = f"{path}{key}"
            if name.startswith(DATASET):
                continue
            if key not in shipped:
                yield f"{name}: in config.py ({defaults[key]!r}), missing from params.yaml"
            elif key not in defaults:
                yield f"{name}: in params.yaml, unknown to config.py"
            else:
                yield from differences(shipped[key], defaults[key], f"{name}.")
    elif shipped != defaults:
        yield f"{path[:-1]}: params.yaml {shipped!r}, config.py {defaults!r}"


def test_config_defaults_are_the_shipped_params_and_every_setting_is_in_params_yaml():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    defaults = Settings().model_dump(mode="json")
    assert list(differences(shipped, defaults)) == []


def test_the_lineage_hash_covers_the_model_sections_only(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))

    def hashed(change):
        changed = yaml.safe_load(yaml.safe_dump(raw))
        change(changed)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(changed), encoding="utf-8")
        return load_settings(path).params_hash()

    same = hashed(lambda p: None)
    assert hashed(lambda p: p["serving"].update(port=p["serving"].get("port", 8000) + 1)) == same
    assert hashed(lambda p: p["ab"].update(alpha=0.01)) == same
    assert hashed(lambda p: p["paths"].update(reports_dir="elsewhere")) == same
    assert hashed(lambda p: p.update(threads=2)) == same
    assert hashed(lambda p: p["candidates"].update(factors=29)) != same
    assert hashed(lambda p: p["ranker"].update(num_leaves=14)) != same
    assert hashed(lambda p: p.update(seed=7)) != same
    assert set(MODEL_SECTIONS) <= set(raw)
