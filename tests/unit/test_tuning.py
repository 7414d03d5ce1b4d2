"""Writing tuned values into params.yaml: only the named keys change, comments and layout stay."""

from recops.tuning import updates, write_params


def test_write_params_replaces_values_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top comment\nseed: 42\ncandidates:\n  factors: 64      # MF size\n  ease_l2: 100.0\n"
                    "ranker:\n  num_leaves: 15\n  learning_rate: 0.05  # step\n  path: null   # optional\n")
    changed = write_params(path, {"candidates": {"factors": 27, "ease_l2": 100.0}, "ranker": {"learning_rate": 0.0312}})
    assert changed == {"candidates.factors": [64, 27], "ranker.learning_rate": [0.05, 0.0312]}
    text = path.read_text()
    assert "# top comment" in text and "# MF size" in text and "# step" in text
    assert "factors: 27" in text and "learning_rate: 0.0312" in text
    assert "ease_l2: 100.0" in text and "num_leaves: 15" in text and "seed: 42" in text
    assert "path: null   # optional" in text


def test_updates_collects_sources_into_candidates_and_rounds_floats():
    report = {"sources": {"mf": {"best": {"factors": 27, "alpha": 1.2345678}},
                          "ease": {"best": {"ease_l2": 92.41234}}},
              "ranker": {"best": {"num_leaves": 9}}}
    assert updates(report) == {"candidates": {"factors": 27, "alpha": 1.235, "ease_l2": 92.41},
                               "ranker": {"num_leaves": 9}}


def test_write_params_says_nothing_changed_and_leaves_the_file_alone_when_the_values_are_already_there(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("candidates:\n  factors: 64  # MF size\n")
    before = path.stat().st_mtime_ns
    assert write_params(path, {"candidates": {"factors": 64}}) == {}
    assert path.stat().st_mtime_ns == before


def test_every_source_with_settings_has_a_search_space_of_valid_settings():
    """A source listed in tuning.sources is searchable: each configurable source with settings has a space, and
    every value a space can suggest builds a valid candidates configuration (e.g. heads dividing the embedding)."""
    import optuna

    from recops.config import CandidatesConfig, SourceName
    from recops.tuning import SOURCE_SPACES
    from typing import get_args

    without_settings = {"popularity"}
    assert set(get_args(SourceName)) - without_settings <= set(SOURCE_SPACES)
    for name, space in SOURCE_SPACES.items():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(20):
            trial = study.ask()
            CandidatesConfig(**{key: suggest(trial) for key, suggest in space.items()})
            study.tell(trial, 0.0)
