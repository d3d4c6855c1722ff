"""limbic-eval-policy: a saved policy played again on the learning loop's evaluation layouts."""

import json
from dataclasses import asdict

import pytest
from test_learning import reach_config

from limbic.launch.config import ConfigError
from limbic.launch.eval_policy import EvalPolicyJob, run
from limbic.runtime.learn import Learner


def test_a_saved_policy_repeats_the_loops_evaluation_and_extends_it(tmp_path, capsys):
    cfg = reach_config(tmp_path, demos=2, bc_pretrain_steps=20, eval_episodes=3)
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        learner.pretrain(20)
        in_loop = learner.evaluate(0, 0.0)
        path = tmp_path / "policy.pt"
        learner.policy.save(path, extra={"learn_config": asdict(cfg)})
    finally:
        learner.close()
    out = tmp_path / "eval"
    job = EvalPolicyJob(
        policy=str(path), episodes=5, split="train", out_dir=str(out), threads=1, progress=False
    )
    first = run(EvalPolicyJob(**{**asdict(job), "episodes": 3}))
    # the same layouts and the same deterministic policy: the loop's figures exactly
    assert first.success_rate == in_loop.success_rate
    assert first.mean_length == pytest.approx(in_loop.mean_length)
    assert first.by_cell == in_loop.by_cell and first.localiser_mm == []
    assert first.outcomes == in_loop.outcomes == {}  # reach carries nothing
    more = run(job)
    assert sum(n for _won, n in more.by_cell.values()) == 5
    saved = json.loads((out / "eval.json").read_text())
    assert saved["episodes"] == 5 and saved["success_rate"] == more.success_rate
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"success={more.success_rate:.3f} episodes=5 mean_length={more.mean_length:.1f}"


def test_what_it_cannot_evaluate_is_named(tmp_path):
    with pytest.raises(ConfigError, match="policy"):
        EvalPolicyJob()
    with pytest.raises(ConfigError, match="split"):
        EvalPolicyJob(policy="p.pt", split="test")
    with pytest.raises(ConfigError, match="is not a file"):
        run(EvalPolicyJob(policy=str(tmp_path / "none.pt"), out_dir=str(tmp_path)))
    # a policy saved without its learning run's config does not say which scene to play
    learner = Learner(reach_config(tmp_path, demos=1, bc_pretrain_steps=0))
    try:
        learner.collect_demos()
        learner.policy.save(tmp_path / "bare.pt")
    finally:
        learner.close()
    with pytest.raises(ConfigError, match="which scene"):
        run(EvalPolicyJob(policy=str(tmp_path / "bare.pt"), out_dir=str(tmp_path)))
